"""Logit parity of our pretrained ResNets with a PyTorch reference in torchvision's layout.

A reference network (`torch_models.TorchvisionResNet`, torchvision's module names) gets random
weights and random batch-norm statistics, is saved with `torch.save` (.pth) and
`safetensors.torch` (.safetensors), and loaded through `build_model(..., weights=path)`. The
figure is the worst |ours - reference| over the logits, relative to the largest reference logit.
A 1-channel model is compared with the reference on the gray image copied to RGB (timm's rule).

    python -m benchmarks.parity            # every case: resnet18/50, even/odd size, 1000/10 classes, 1/3 channels
    python -m benchmarks.parity --reference torchvision   # torchvision's own ResNet (where a wheel of it imports)
    python -m benchmarks.parity --reference timm          # timm's ResNet (same state-dict names)
"""

import argparse
import contextlib
import io
import itertools
import tempfile
from pathlib import Path

import numpy as np

CASES = list(itertools.product((18, 50), (64, 57), (1000, 10), (3, 1)))


def reference_model(depth, num_classes, source="ours"):
    """The PyTorch ResNet to compare with: ours written out, torchvision's or timm's own code."""
    if source == "torchvision":
        import torchvision

        return getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
    if source == "timm":
        import timm

        return timm.create_model(f"resnet{depth}", pretrained=False, num_classes=num_classes)
    from benchmarks.torch_models import TorchvisionResNet

    return TorchvisionResNet(depth, num_classes)


def randomized_reference(depth, num_classes, seed, source="ours"):
    """A torchvision-layout ResNet in eval mode with random weights and batch-norm statistics."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    model = reference_model(depth, num_classes, source)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            shape = tensor.shape
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
            elif name.endswith(("running_mean", ".bias")):
                tensor.copy_(torch.randn(shape, generator=generator) * 0.1)
            elif tensor.ndim == 1:  # batch-norm scale
                tensor.copy_(torch.rand(shape, generator=generator) * 0.5 + 0.75)
            else:
                tensor.copy_(torch.randn(shape, generator=generator) * (2.0 / np.prod(shape[1:])) ** 0.5)
    return model.eval()


def save_both(reference, folder):
    """The reference's state dict as `ref.pth` and `ref.safetensors` in `folder`."""
    import safetensors.torch
    import torch

    folder = Path(folder)
    torch.save(reference.state_dict(), folder / "ref.pth")
    safetensors.torch.save_file(reference.state_dict(), folder / "ref.safetensors")
    return folder / "ref.pth", folder / "ref.safetensors"


def parity_errors(depth, size, num_classes, channels, folder, source="ours"):
    """{format: worst relative logit error} of our resnet<depth> against the reference, for one case."""
    import torch

    from keras_resnet_lab.models import build_model
    from keras_resnet_lab.models.checkpoints import read_checkpoint
    from keras_resnet_lab.models.pretrained import load_torchvision_weights

    reference = randomized_reference(depth, num_classes, seed=depth + size + num_classes + channels, source=source)
    pth, safetensors_file = save_both(reference, folder)
    images = np.random.default_rng(size).random((2, size, size, channels), dtype=np.float32)
    rgb = np.repeat(images, 3 // channels, axis=-1).transpose(0, 3, 1, 2)
    with torch.no_grad():
        expected = reference(torch.from_numpy(rgb.copy())).numpy()
    with contextlib.redirect_stdout(io.StringIO()):  # build_model says what it loaded
        model = build_model(f"resnet{depth}", input_shape=(size, size, channels), num_classes=num_classes, weights=pth)
    errors = {"pth": _relative_error(model, images, expected)}
    load_torchvision_weights(model, read_checkpoint(safetensors_file), source=safetensors_file.name)
    errors["safetensors"] = _relative_error(model, images, expected)
    return errors


def _relative_error(model, images, expected):
    logits = np.asarray(model(images, training=False))
    return float(np.abs(logits - expected).max() / np.abs(expected).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", choices=("ours", "torchvision", "timm"), default="ours",
                        help="the PyTorch network: benchmarks/torch_models.py (default), torchvision's or timm's")
    args = parser.parse_args(argv)
    import keras

    print(f"reference: {args.reference}; Keras backend: {keras.backend.backend()}")
    print("| model | input | classes | .pth | .safetensors |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for depth, size, classes, channels in CASES:
            errors = parity_errors(depth, size, classes, channels, folder, args.reference)
            print(f"| resnet{depth} | {size}x{size}x{channels} | {classes} | {errors['pth']:.1e} | "
                  f"{errors['safetensors']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
