"""The small MNIST networks of seeds 000 and 004: a plain CNN, LeNet-5 and its residual variant."""

import keras
from keras import layers

from ..errors import ConfigError
from .layers import activation_layer, check_activation, check_min_size, classifier_head
from .layers import batch_norm as batch_norm_layer


def _check_rate(option, value):
    if not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{option} must be a dropout rate in [0, 1); received {value!r}.")


def baseline_cnn(input_shape, num_classes, *, name, conv_dropout=0.5, dense_dropout=0.5):
    """Report 000's MNIST classifier (PyTorch's MNIST example): 21,840 parameters on 28x28x1.

    conv 10@5x5, max-pool, ReLU, conv 20@5x5, spatial dropout, max-pool, ReLU, dense 50, ReLU,
    dropout, dense `num_classes`.
    """
    _check_rate("conv_dropout", conv_dropout)
    _check_rate("dense_dropout", dense_dropout)
    check_min_size(name, input_shape, 16)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(10, 5, name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(20, 5, name="conv2")(x)
    x = layers.SpatialDropout2D(conv_dropout, name="conv2_dropout")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(50, activation="relu", name="dense1")(x)
    outputs = classifier_head(x, num_classes, pooling=None, dropout=dense_dropout)
    return keras.Model(inputs, outputs, name=name)


def _residual_block(x, activation, batch_norm, name):
    """Report 004's ResNetBlock: conv 3x3, activation, conv 3x3, add, activation."""
    filters = x.shape[-1]
    y = x
    for i in (1, 2):
        y = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}")(y)
        if batch_norm:
            y = batch_norm_layer(y, name=f"{name}_bn{i}")
        if i == 1:
            y = activation_layer(activation, f"{name}_act1")(y)
    y = layers.Add(name=f"{name}_add")([x, y])
    return activation_layer(activation, f"{name}_out")(y)


def _normalize_num_blocks(num_blocks):
    if isinstance(num_blocks, int):
        num_blocks = (num_blocks, num_blocks)
    num_blocks = tuple(num_blocks)
    if len(num_blocks) != 2 or any(not isinstance(n, int) or n < 0 for n in num_blocks):
        raise ConfigError(
            "num_blocks must be a count per stage: an integer >= 0 or two of them "
            f"(before and after the second pooling); received {num_blocks!r}."
        )
    return num_blocks


def lenet_resnet(
    input_shape, num_classes, *, name, num_blocks=(2, 2), activation="relu", batch_norm=False
):
    """Report 004's MNISTNetwork (`num_blocks=0`) and MNISTResNetwork (residual blocks of 16@3x3).

    conv 6@5x5 'same', max-pool, activation, conv 16@5x5 'same', `num_blocks[0]` residual blocks,
    max-pool, `num_blocks[1]` residual blocks, activation, dense 120, dense 84, dense `num_classes`.
    With no blocks this is LeNet-5 (107,786 parameters on 28x28x1); with (2, 2) and no batch
    norm it is report 004's network (126,346).
    """
    num_blocks = _normalize_num_blocks(num_blocks)
    check_activation(activation)
    check_min_size(name, input_shape, 4)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(6, 5, padding="same", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = activation_layer(activation, "act1")(x)
    x = layers.Conv2D(16, 5, padding="same", name="conv2")(x)
    for stage, count in enumerate(num_blocks, start=1):
        if stage == 2:
            x = layers.MaxPooling2D(2, name="pool2")(x)
        for block in range(1, count + 1):
            x = _residual_block(x, activation, batch_norm, f"stage{stage}_block{block}")
    x = activation_layer(activation, "act2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, name="dense1")(x)
    x = activation_layer(activation, "dense1_act")(x)
    x = layers.Dense(84, name="dense2")(x)
    x = activation_layer(activation, "dense2_act")(x)
    outputs = classifier_head(x, num_classes, pooling=None)
    return keras.Model(inputs, outputs, name=name)
