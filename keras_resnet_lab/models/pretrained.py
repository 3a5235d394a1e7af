"""Pretrained weights on our ResNets: torchvision's state-dict names mapped one to one onto ours.

Our ImageNet ResNets follow torchvision's layout exactly, so each of its tensors has one home:

    conv1, bn1                              -> stem_conv, stem_bn
    layer{s}.{b-1}.conv{k}, .bn{k}          -> stage{s}_block{b}_{k}_conv, _{k}_bn
    layer{s}.{b-1}.downsample.0, .1         -> stage{s}_block{b}_shortcut_conv, _shortcut_bn
    fc                                      -> predictions

Convolution kernels go from PyTorch's (out, in, h, w) to Keras' (h, w, in, out), the dense
kernel is transposed, and batch norm takes weight, bias, running_mean and running_var as gamma,
beta, moving_mean and moving_variance.
"""

import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError, WeightsError
from ..files import CHECKPOINT_SUFFIXES, sha256_once
from . import checkpoints

_BLOCK_LAYER = re.compile(r"^stage(\d+)_block(\d+)_(\d|shortcut)_(conv|bn)$")
_STEM = {"stem_conv": "conv1", "stem_bn": "bn1", "predictions": "fc"}
_BN_TENSORS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
               ("moving_variance", "running_var"))
IGNORED_SUFFIX = ".num_batches_tracked"  # PyTorch's batch counter: no Keras counterpart, not needed


def torchvision_module(layer_name):
    """The torchvision module name of one of our layers (`stage2_block1_1_conv` -> `layer2.0.conv1`)."""
    if layer_name in _STEM:
        return _STEM[layer_name]
    match = _BLOCK_LAYER.match(layer_name)
    if not match:
        return None
    stage, block, part, kind = match.groups()
    prefix = f"layer{stage}.{int(block) - 1}"
    if part == "shortcut":
        return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
    return f"{prefix}.{kind}{part}"


def _layer_tensors(layer):
    """[(variable, torchvision tensor suffix, to_keras, to_torch)] for one of our weighted layers."""
    if layer.name.endswith("_bn"):
        return [(getattr(layer, ours), theirs, _same, _same) for ours, theirs in _BN_TENSORS]
    if layer.name == "predictions":
        return [(layer.kernel, "weight", np.transpose, np.transpose), (layer.bias, "bias", _same, _same)]
    return [(layer.kernel, "weight", _conv_to_keras, _conv_to_torch)]


def _same(array):
    return array


def _conv_to_keras(array):
    return np.transpose(array, (2, 3, 1, 0))


def _conv_to_torch(array):
    return np.transpose(array, (3, 2, 0, 1))


def _mapped_layers(model):
    layers = [(layer, torchvision_module(layer.name)) for layer in model.layers if layer.weights]
    unmapped = [layer.name for layer, module in layers if module is None]
    if unmapped:
        raise ConfigError(f"{model.name} has layers with no torchvision counterpart ({', '.join(unmapped[:3])}); "
                          f"pretrained weights fit the ImageNet ResNets resnet18 to resnet152.")
    return layers


def torchvision_state_dict(model):
    """{torchvision name: NumPy array} of `model`'s weights, as `torchvision.models.resnetNN` names them."""
    state = {}
    for layer, module in _mapped_layers(model):
        for variable, suffix, _, to_torch in _layer_tensors(layer):
            state[f"{module}.{suffix}"] = to_torch(np.asarray(variable.numpy(), np.float32))
        if layer.name.endswith("_bn"):
            state[f"{module}{IGNORED_SUFFIX}"] = np.array(0, np.int64)
    return state


def save_torchvision_weights(model, path):
    """Writes `model`'s weights as a torchvision-layout checkpoint (`.safetensors`, or `.pth` with torch).

    The file loads into `torchvision.models.resnetNN(num_classes=...)` with `load_state_dict`,
    and back into our models with `build_model(..., weights=path)`.
    """
    return checkpoints.write_checkpoint(torchvision_state_dict(model), path)


def adapt_stem_kernel(kernel, channels):
    """timm's rule for a first conv (out, in, h, w) on `channels` inputs.

    To 1 channel: the sum of the kernels (a gray image copied to every channel gives the same
    output); to more: the kernels repeated over the channels and scaled by in / channels, so
    the activation keeps its scale (3 -> 4: RGBR, times 3/4).
    """
    have = kernel.shape[1]
    if channels == have:
        return kernel
    if channels == 1:
        return kernel.sum(axis=1, keepdims=True)
    repeats = -(-channels // have)
    return np.tile(kernel, (1, repeats, 1, 1))[:, :channels] * (have / channels)


def load_torchvision_weights(model, state, *, source, small_stem=False):
    """Loads a torchvision state dict into `model` (built by `build_model`); returns what it said.

    Every tensor is used exactly once. The first conv is adapted to the model's channel count
    (`adapt_stem_kernel`); a 7x7 ImageNet stem does not fit our `small_stem` (3x3, no pool),
    which is then left as initialised, as is a head whose class count differs from the
    checkpoint's (or a checkpoint without one).

    Raises:
        WeightsError: a tensor missing, unexpected or of the wrong shape, named.
    """
    state = dict(state)
    assignments, missing, notes = [], [], []
    left_out = set()
    stem_size = state["conv1.weight"].shape[-1] if "conv1.weight" in state else None
    if small_stem and stem_size != model.get_layer("stem_conv").kernel.shape[0]:
        left_out |= {k for k in state if k.startswith(("conv1.", "bn1."))}
        notes.append("the small stem (3x3 conv, no pool) is initialised fresh: the checkpoint's 7x7 stem does not fit it")
    head = model.get_layer("predictions")
    classes = state.get("fc.weight", np.zeros((0, 0))).shape[0]
    if "fc.weight" not in state and "fc.bias" not in state:
        left_out |= {"fc.weight", "fc.bias"}
        notes.append(f"the head (predictions, {head.units} classes) is initialised fresh: the checkpoint has none")
    elif classes != head.units:
        left_out |= {"fc.weight", "fc.bias"}
        notes.append(f"the head (predictions, {head.units} classes) is initialised fresh: the checkpoint has {classes}")
    for layer, module in _mapped_layers(model):
        for variable, suffix, to_keras, _ in _layer_tensors(layer):
            key = f"{module}.{suffix}"
            if key in left_out:
                continue
            if key not in state:
                missing.append(key)
                continue
            array = state[key]
            if key == "conv1.weight":
                array = adapt_stem_kernel(array, variable.shape[2])
                if array.shape[1] != state[key].shape[1]:
                    notes.append(f"the first conv's {state[key].shape[1]}-channel kernels are adapted to "
                                 f"{array.shape[1]} input channel(s)")
            array = to_keras(array)
            if tuple(array.shape) != tuple(variable.shape):
                raise WeightsError(f"{source}: tensor {key} has shape {tuple(state[key].shape)}, but {model.name}'s "
                                   f"{layer.name} needs {_torch_shape(variable.shape, suffix, layer.name)}. "
                                   f"{_depth_hint(state, model)}")
            assignments.append((variable, array, key))
    used = {key for *_, key in assignments} | left_out
    unexpected = [k for k in state if k not in used and not k.endswith(IGNORED_SUFFIX)]
    if missing or unexpected:
        raise WeightsError(f"{source} does not fit {model.name}: " + "; ".join(
            f"{what} {_listed(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys
        ) + f". {_depth_hint(state, model)}")
    for variable, array, _ in assignments:
        variable.assign(array.astype(np.float32))
    return [f"{model.name}: loaded {len(assignments)} tensors from {source}", *notes]


def _listed(keys):
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _torch_shape(shape, suffix, layer_name):
    if suffix == "weight" and len(shape) == 4:
        return tuple(_conv_to_torch(np.zeros(shape)).shape)
    return tuple(reversed(shape)) if layer_name == "predictions" and suffix == "weight" else tuple(shape)


def _depth_hint(state, model):
    """Which torchvision ResNet the checkpoint is, judged from its keys."""
    from .resnet import IMAGENET_STAGES

    counts = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    kind = "bottleneck" if any(".conv3." in k for k in state) else "basic"
    for depth, stages in IMAGENET_STAGES.items():
        if stages == (kind, counts):
            return f"The checkpoint is a resnet{depth}; build that model." if f"resnet{depth}" != model.name else ""
    return "Is it a torchvision ResNet checkpoint?"


# ---------------------------------------------------------------------------- build_model's `weights`

def check_weights(weights):
    """Refuses a `weights` value that is neither None, "imagenet" nor a checkpoint path."""
    if weights is None or weights == "imagenet":
        return weights
    if not isinstance(weights, (str, Path)):
        raise ConfigError(f"weights must be None, 'imagenet' or the path of a .pth or .safetensors file; "
                          f"received {weights!r}.")
    if Path(weights).suffix not in CHECKPOINT_SUFFIXES:
        raise ConfigError(f"weights must be None, 'imagenet' or the path of a .pth or .safetensors file; received "
                          f"{str(weights)!r}.")
    return str(weights)


def weights_file(model_name, weights, *, verify=False):
    """The checkpoint file behind `weights` for `model_name` (downloading the "imagenet" one).

    `verify`: also refuse a path that is not a file (the "imagenet" files are always checked).
    """
    if weights == "imagenet":
        return checkpoints.imagenet_file(model_name)
    return checkpoints.checked_path(weights) if verify else Path(weights).expanduser()


def weights_identity(model_name, weights):
    """What a run's identity records of its starting weights: the checkpoint's SHA-256."""
    if weights is None:
        return None
    if weights == "imagenet" and model_name in checkpoints.IMAGENET_FILES:
        return {"imagenet": checkpoints.IMAGENET_FILES[model_name][1]}
    path = Path(weights).expanduser()
    return {"sha256": sha256_once(path) if path.is_file() else None, "file": path.name}


def load_pretrained(model, model_name, weights, *, small_stem):
    """Loads `weights` (None, "imagenet" or a path) into `model` and prints what was done."""
    if weights is None:
        return model
    path = weights_file(model_name, weights)
    for line in load_torchvision_weights(model, checkpoints.read_checkpoint(path), source=path.name,
                                         small_stem=small_stem):
        print(line, flush=True)
    return model
