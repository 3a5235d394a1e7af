"""Plain PyTorch versions of our benchmarked networks, with the same parameter counts.

Written as a student would (nn.Module, NCHW), without torchvision (no CPU build of it exists
here): the reference side of `benchmarks.run`.
"""

import torch
from torch import nn
from torch.nn import functional as F


class BaselineCNN(nn.Module):
    """Report 000's net (PyTorch's MNIST example): 21,840 parameters."""

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
    """Report 004's MNISTResNetwork: 126,346 parameters with (2, 2) blocks."""

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


class TorchvisionBasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock, with its module names."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TorchvisionBottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: the stride sits in the 3x3), with its module names."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


TORCHVISION_LAYOUTS = {
    18: (TorchvisionBasicBlock, (2, 2, 2, 2)), 34: (TorchvisionBasicBlock, (3, 4, 6, 3)),
    50: (TorchvisionBottleneck, (3, 4, 6, 3)), 101: (TorchvisionBottleneck, (3, 4, 23, 3)),
    152: (TorchvisionBottleneck, (3, 8, 36, 3)),
}


class TorchvisionResNet(nn.Module):
    """torchvision.models.ResNet written out (no torchvision wheel fits the CPU torch here): the same
    module names, so its state dict is a torchvision checkpoint. `small_stem`: a 3x3 stride-1 conv
    and no max-pool (our stem="small")."""

    def __init__(self, depth=18, num_classes=1000, in_channels=3, small_stem=False):
        super().__init__()
        block, layers = TORCHVISION_LAYOUTS[depth]
        self.inplanes = 64
        self.conv1 = (nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False) if small_stem
                      else nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, count, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet(nn.Module):
    """The CIFAR ResNets of He et al. section 4.2 (option A shortcuts)."""

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
        return TorchvisionResNet(50, num_classes), (3, 224, 224)
    if name == "baseline_cnn":
        return BaselineCNN(), (1, 28, 28)
    if name == "mnist_resnet":
        return MNISTResNet(), (1, 28, 28)
    if name == "cifar_resnet20":
        return ResNet((3, 3, 3), (16, 32, 64), shortcut="A"), (3, 32, 32)
    if name == "resnet18":
        return TorchvisionResNet(18, num_classes, small_stem=True), (3, 32, 32)
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
