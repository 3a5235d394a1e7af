"""Fine-tuning helpers: freeze all but the last k blocks, and count what stays trainable."""

import re

import numpy as np

from ..errors import ConfigError

_BLOCK_PATTERN = re.compile(r"^(stem|stage\d+_block\d+)_")


def _unit_of(layer_name):
    """The block a layer belongs to: 'stem', 'stage2_block1', or the layer's own name."""
    match = _BLOCK_PATTERN.match(layer_name)
    return match.group(1) if match else layer_name


def trainable_units(model):
    """The model's units in order: the stem, each residual block, then each other weighted layer."""
    units = []
    for layer in model.layers:
        unit = _unit_of(layer.name)
        if layer.weights and unit not in units:
            units.append(unit)
    return units


def freeze(model, trainable_last):
    """Freezes `model` except its last `trainable_last` units, in place, and returns it.

    A unit is a residual block (`stage3_block2`), the stem, or a single weighted layer outside
    blocks (`dense1`, `predictions`). So `freeze(resnet18, trainable_last=3)` trains
    `stage4_block1`, `stage4_block2` and `predictions`. Frozen batch normalization layers run in
    inference mode (Keras 3 does this for any BatchNormalization with `trainable=False`).
    Recompile the model after freezing.
    """
    units = trainable_units(model)
    if not isinstance(trainable_last, int) or not 0 <= trainable_last <= len(units):
        raise ConfigError(
            f"trainable_last must be an integer from 0 to {len(units)} (the number of units of "
            f"{model.name!r}); received {trainable_last!r}."
        )
    keep = set(units[len(units) - trainable_last:])
    for layer in model.layers:
        if layer.weights:
            layer.trainable = _unit_of(layer.name) in keep
    return model


def parameter_counts(model):
    """Returns {'trainable': n, 'non_trainable': n, 'total': n} for `model`."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"trainable": trainable, "non_trainable": frozen, "total": trainable + frozen}


def print_parameter_summary(model, file=None):
    """Prints trainable and frozen parameter counts, and which units are frozen; returns the counts."""
    counts = parameter_counts(model)
    frozen_units = [u for u in trainable_units(model)
                    if not any(l.trainable for l in model.layers if l.weights and _unit_of(l.name) == u)]
    print(f"{model.name}: {counts['trainable']:,} trainable, {counts['non_trainable']:,} frozen or "
          f"non-trainable (batch-norm statistics included), {counts['total']:,} in all", file=file)
    if frozen_units:
        shown = ", ".join(frozen_units[:6]) + (", ..." if len(frozen_units) > 6 else "")
        print(f"  frozen units ({len(frozen_units)}): {shown}", file=file)
    return counts
