"""Building blocks shared by every family: conv+BN helpers, activations, the classifier head."""

import keras
from keras import layers

from ..errors import ConfigError, choices_message

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh")

# PyTorch's BatchNorm defaults, so that torchvision weights map onto our layers one to one.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
# torchvision's ResNet initialization: kaiming_normal_(mode="fan_out", nonlinearity="relu").
TORCH_CONV_INIT = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ConfigError(choices_message("activation", activation, ACTIVATIONS))
    return activation


def activation_layer(activation, name):
    return layers.Activation(activation, name=name)


def conv_bn(x, filters, kernel_size, *, strides=1, name):
    """A bias-free convolution followed by batch normalization (the ResNet convention).

    Stride-2 convolutions pad explicitly and symmetrically, as PyTorch does, instead of Keras'
    asymmetric 'same' padding, so the outputs match torchvision's layer for layer.
    """
    pad = kernel_size // 2
    if strides > 1 and pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=TORCH_CONV_INIT,
        name=f"{name}_conv",
    )(x)
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)


def classifier_head(x, num_classes, *, pooling="avg", dropout=0.0):
    """The one head of every model: pooling, optional dropout, `Dense(name="predictions")`.

    The zoo outputs logits (no softmax); losses and metrics use `from_logits=True`, and the
    exported SavedModel adds the softmax.
    """
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "flatten":
        x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 logits keep the loss stable under mixed precision.
    return layers.Dense(num_classes, dtype="float32", name="predictions")(x)


class ChannelPad(layers.Layer):
    """Zero-pads the channel axis: the parameter-free 'option A' shortcut of He et al. (2016)."""

    def __init__(self, before, after, **kwargs):
        super().__init__(**kwargs)
        self.before = before
        self.after = after

    def call(self, x):
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.before, self.after]])

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return (*input_shape[:-1], None if channels is None else channels + self.before + self.after)

    def get_config(self):
        return {**super().get_config(), "before": self.before, "after": self.after}


keras.saving.register_keras_serializable(package="keras_resnet_lab")(ChannelPad)
