"""ResNets of He et al. (2016): the CIFAR family (section 4.2) and the ImageNet family laid out
exactly as torchvision's (bias-free convs before batch norm, the stride in the bottleneck's 3x3).
"""

import keras
from keras import layers

from ..errors import ConfigError, choices_message
from .layers import activation_layer, check_activation, check_min_size, classifier_head, conv_bn

CIFAR_FILTERS = (16, 32, 64)
IMAGENET_FILTERS = (64, 128, 256, 512)
IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
SHORTCUTS = ("A", "B")
STEMS = ("imagenet", "small")
BOTTLENECK_EXPANSION = 4


def _shortcut(x, filters, strides, kind, name):
    """Identity where shapes agree; else zero-padding (option A) or a 1x1 projection (B)."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    if kind == "B":
        return conv_bn(x, filters, 1, strides=strides, name=f"{name}_shortcut")
    if strides > 1:
        x = layers.MaxPooling2D(1, strides, name=f"{name}_shortcut_subsample")(x)
    extra = filters - x.shape[-1]
    # Zero channels on both sides. ZeroPadding2D in channels_first mode pads the last two axes,
    # here (width, channels): a standard layer, so saved models load in plain Keras.
    padding = ((0, 0), (extra // 2, extra - extra // 2))
    return layers.ZeroPadding2D(padding, data_format="channels_first", name=f"{name}_shortcut_pad")(x)


def _act(x, activation, dropout, name):
    x = activation_layer(activation, name)(x)
    return layers.Dropout(dropout, name=f"{name}_dropout")(x) if dropout else x


def basic_block(x, filters, strides, *, shortcut, activation, dropout, name, zero_init_residual=False):
    """Two 3x3 conv-BN layers and a shortcut; `dropout` follows each activation (report 003).

    `zero_init_residual` starts the branch's last batch-norm scale at 0, so that the block starts
    as the identity (torchvision's option of that name; Goyal et al. 2017).
    """
    y = conv_bn(x, filters, 3, strides=strides, name=f"{name}_1")
    y = _act(y, activation, dropout, f"{name}_1_act")
    y = conv_bn(y, filters, 3, zero_gamma=zero_init_residual, name=f"{name}_2")
    y = layers.Add(name=f"{name}_add")([_shortcut(x, filters, strides, shortcut, name), y])
    return _act(y, activation, dropout, f"{name}_out")


def bottleneck_block(x, filters, strides, *, shortcut, activation, dropout, name, zero_init_residual=False):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's v1.5), 1x1 expand by 4."""
    y = conv_bn(x, filters, 1, name=f"{name}_1")
    y = _act(y, activation, dropout, f"{name}_1_act")
    y = conv_bn(y, filters, 3, strides=strides, name=f"{name}_2")
    y = _act(y, activation, dropout, f"{name}_2_act")
    y = conv_bn(y, filters * BOTTLENECK_EXPANSION, 1, zero_gamma=zero_init_residual, name=f"{name}_3")
    expanded = filters * BOTTLENECK_EXPANSION
    y = layers.Add(name=f"{name}_add")([_shortcut(x, expanded, strides, shortcut, name), y])
    return _act(y, activation, dropout, f"{name}_out")


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}


def _stack(x, block, stage_sizes, filters, **block_args):
    for stage, (count, width) in enumerate(zip(stage_sizes, filters), start=1):
        for index in range(1, count + 1):
            strides = 2 if stage > 1 and index == 1 else 1
            x = block(x, width, strides, name=f"stage{stage}_block{index}", **block_args)
    return x


def _stem(x, kind, filters, activation):
    if kind == "imagenet":
        x = conv_bn(x, filters, 7, strides=2, name="stem")
        x = activation_layer(activation, "stem_act")(x)
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        return layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    x = conv_bn(x, filters, 3, name="stem")
    return activation_layer(activation, "stem_act")(x)


def cifar_resnet(input_shape, num_classes, *, name, depth=20, shortcut="A", activation="relu"):
    """The CIFAR ResNet of section 4.2: depth = 6n+2, three stages of n basic blocks (16/32/64)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"cifar_resnet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202, ...); "
            f"received {depth!r}."
        )
    if shortcut not in SHORTCUTS:
        raise ConfigError(choices_message("shortcut", shortcut, SHORTCUTS))
    check_activation(activation)
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="image")
    x = _stem(inputs, "small", CIFAR_FILTERS[0], activation)
    x = _stack(
        x, basic_block, (blocks_per_stage,) * 3, CIFAR_FILTERS,
        shortcut=shortcut, activation=activation, dropout=0.0,
    )
    return keras.Model(inputs, classifier_head(x, num_classes), name=name)


def imagenet_resnet(
    input_shape, num_classes, *, name, depth=18, stem="imagenet", block_dropout=0.0,
    head_dropout=0.0, activation="relu", zero_init_residual=False,
):
    """ResNet-18/34/50/101/152 as torchvision lays them out, with a swappable first layer.

    `stem="imagenet"`: 7x7 stride-2 conv and 3x3 stride-2 max-pool (224x224 inputs);
    `stem="small"`: one 3x3 stride-1 conv and no pool, for 8x8 to 64x64 inputs. Any channel count
    is accepted; `num_classes` swaps the last layer. `zero_init_residual=True` starts every
    residual branch's last batch-norm scale at 0, as torchvision's option of that name.
    """
    if depth not in IMAGENET_STAGES:
        raise ConfigError(choices_message("ImageNet ResNet depth", depth, list(IMAGENET_STAGES)))
    if stem not in STEMS:
        raise ConfigError(choices_message("stem", stem, STEMS))
    for option, rate in (("block_dropout", block_dropout), ("head_dropout", head_dropout)):
        if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigError(f"{option} must be a dropout rate in [0, 1); received {rate!r}.")
    if not isinstance(zero_init_residual, bool):
        raise ConfigError(f"zero_init_residual must be true or false; received {zero_init_residual!r}.")
    check_activation(activation)
    if stem == "imagenet":  # stem and stages shrink 32-fold: below 17 the last two stages see 1x1 maps
        check_min_size(f"{name} with stem='imagenet'", input_shape, 17,
                       "Use the small stem for tiny images (model_options stem='small') or resize them (image_size).")
    block, stage_sizes = IMAGENET_STAGES[depth]
    inputs = keras.Input(input_shape, name="image")
    x = _stem(inputs, stem, IMAGENET_FILTERS[0], activation)
    x = _stack(
        x, BLOCKS[block], stage_sizes, IMAGENET_FILTERS,
        shortcut="B", activation=activation, dropout=block_dropout, zero_init_residual=zero_init_residual,
    )
    return keras.Model(inputs, classifier_head(x, num_classes, dropout=head_dropout), name=name)
