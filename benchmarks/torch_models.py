"""Plain PyTorch versions of our benchmarked networks, with the same parameter counts.

Written as a student would (nn.Module, NCHW), without torchvision (no CPU build of it exists
here): the reference side of `benchmarks.run`.
"""

import torch
from torch import nn
from torch.nn import functional as F


class BaselineCNN(nn.Module):
    """Seed 000's net (PyTorch's MNIST example): 21,840 parameters."""

    def __init__(self, num_classes=10, conv_dropout=0.5, dense_dropout=0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.conv2_drop = nn.Dropout2d(conv_dropout)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, num_classes)
        self.dense_dropout = dense_dropout

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(F.dropout(x, self.dense_dropout, self.training))


class Seed004Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class MNISTResNet(nn.Module):
    """Seed 004's MNISTResNetwork: 126,346 parameters with (2, 2) blocks."""

    def __init__(self, num_classes=10, num_blocks=(2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
        self.stage1 = nn.Sequential(*[Seed004Block(16) for _ in range(num_blocks[0])])
        self.stage2 = nn.Sequential(*[Seed004Block(16) for _ in range(num_blocks[1])])
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 120), nn.Linear(120, 84), nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = self.stage2(F.max_pool2d(self.stage1(self.conv2(x)), 2))
        x = F.relu(x).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class BasicBlock(nn.Module):
    def __init__(self, in_channels, channels, stride, shortcut="B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut, self.pad = nn.Identity(), 0
        if stride != 1 or in_channels != channels:
            if shortcut == "A":
                self.pad = (channels - in_channels) // 2
                self.shortcut = nn.MaxPool2d(1, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                              nn.BatchNorm2d(channels))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        s = self.shortcut(x)
        if self.pad:
            s = F.pad(s, (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(s + y)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride sits in the 3x3."""

    def __init__(self, in_channels, channels, stride):
        super().__init__()
        out = channels * 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, out, 1, bias=False), nn.BatchNorm2d(out))
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        return F.relu(self.shortcut(x) + self.body(x))


class ResNet50(nn.Module):
    """torchvision's resnet50 layout (25,557,032 parameters with 1000 classes)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, channels = [], 64
        for stage, (count, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for index in range(count):
                blocks.append(Bottleneck(channels, width, 2 if stage and not index else 1))
                channels = width * 4
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class ResNet(nn.Module):
    """CIFAR ResNets (option A) and torchvision's ResNet-18/34 layout with the small stem."""

    def __init__(self, stage_sizes, widths, in_channels=3, num_classes=10, shortcut="B"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        blocks, channels = [], widths[0]
        for stage, (count, width) in enumerate(zip(stage_sizes, widths)):
            for index in range(count):
                blocks.append(BasicBlock(channels, width, 2 if stage and not index else 1, shortcut))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def build(name, num_classes=10):
    """(module, input shape NCHW without batch) for a benchmark case's model name."""
    if name == "resnet50":
        return ResNet50(num_classes), (3, 224, 224)
    if name == "baseline_cnn":
        return BaselineCNN(), (1, 28, 28)
    if name == "mnist_resnet":
        return MNISTResNet(), (1, 28, 28)
    if name == "cifar_resnet20":
        return ResNet((3, 3, 3), (16, 32, 64), shortcut="A"), (3, 32, 32)
    if name == "resnet18":
        return ResNet((2, 2, 2, 2), (64, 128, 256, 512)), (3, 32, 32)
    raise ValueError(name)


def parameter_count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def random_affine(images, generator, degrees=10.0, translate=0.1, scale=0.1):
    """Per-image rotation, translation and zoom on an NCHW batch (our "affine" augmentation)."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * degrees * torch.pi / 180
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
