"""Building blocks shared by every family: conv+BN helpers, activations, the classifier head."""

import keras
from keras import layers

from ..errors import ConfigError, choices_message

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh")

# PyTorch's BatchNorm defaults, so that torchvision weights map onto our layers one to one.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def torch_conv_init():
    """torchvision's ResNet initialization: kaiming_normal_(mode="fan_out", nonlinearity="relu").

    A new initializer for every layer: a Keras initializer draws its seed once, when it is made,
    so one shared instance gave every convolution of the same shape the same starting weights,
    and (made at import, before `keras.utils.set_random_seed`) different ones in every process.
    """
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def check_min_size(name, input_shape, minimum, fix="Resize the data, e.g. load_dataset(..., image_size=(28, 28))."):
    """Refuses inputs smaller than `minimum` pixels a side, which `name` would shrink to nothing."""
    height, width = input_shape[:2]
    if height < minimum or width < minimum:
        raise ConfigError(f"{name} needs inputs of at least {minimum}x{minimum}; received {height}x{width}. {fix}")


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ConfigError(choices_message("activation", activation, ACTIVATIONS))
    return activation


def activation_layer(activation, name):
    return layers.Activation(activation, name=name)


def conv_bn(x, filters, kernel_size, *, strides=1, zero_gamma=False, name):
    """A bias-free convolution followed by batch normalization (the ResNet convention).

    Stride-2 convolutions pad explicitly and symmetrically, as PyTorch does, instead of Keras'
    asymmetric 'same' padding, so the outputs match torchvision's layer for layer.
    `zero_gamma` starts the batch norm's scale at 0 (the last layer of a residual branch).
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
        kernel_initializer=torch_conv_init(),
        name=f"{name}_conv",
    )(x)
    return batch_norm(x, zero_gamma=zero_gamma, name=f"{name}_bn")


def batch_norm(x, *, zero_gamma=False, name):
    """Batch normalization with PyTorch's epsilon and momentum, fused on TensorFlow."""
    gamma = "zeros" if zero_gamma else "ones"
    return BatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, gamma_initializer=gamma, name=name)(x)


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


class BatchNorm(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that trains through TensorFlow's fused kernel.

    Keras 3 normalizes with separate moment, subtract and scale ops, which made batch norm most
    of a CIFAR ResNet-20 training step on CPU: the fused op (FusedBatchNormV3 and its fused
    gradient, as tf.keras 2 used) trains ResNet-20 about 1.4x faster (README, Performance).
    Outputs and gradients are those of the parent layer; the moving variance is updated with
    the unbiased batch variance, as PyTorch's and tf.keras 2's are. Other backends, masks,
    renorm, inference and frozen layers take the parent's path.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.cast(self.gamma, "float32") if self.scale else tf.ones(inputs.shape[-1]),
            tf.cast(self.beta, "float32") if self.center else tf.zeros(inputs.shape[-1]),
            epsilon=self.epsilon,
            is_training=True,
        )[:3]
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs

    def _fusable(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "float16", "bfloat16")
        )


keras.saving.register_keras_serializable(package="keras_resnet_lab")(BatchNorm)


def portable_copy(model):
    """An uncompiled copy of `model` with only Keras' own layers, for files that load without this package.

    Each `BatchNorm` becomes the `keras.layers.BatchNormalization` it subclasses (the same
    variables and inference math; only the training kernel differs), weights copied; the
    optimizer (whose schedule may be this package's) is left out. A model that cannot be rebuilt
    from its config (a subclassed model) comes back as is.
    """
    try:
        copy = model.__class__.from_config(_plain_layers(model.get_config()))
    except (NotImplementedError, TypeError, ValueError):
        return model
    copy.set_weights(model.get_weights())
    return copy


def _plain_layers(config):
    """A model config with every serialized `BatchNorm` turned into Keras' BatchNormalization."""
    if isinstance(config, list):
        return [_plain_layers(item) for item in config]
    if not isinstance(config, dict):
        return config
    config = {key: _plain_layers(value) for key, value in config.items()}
    if config.get("registered_name") == "keras_resnet_lab>BatchNorm":
        config.update(module="keras.layers", class_name="BatchNormalization", registered_name=None)
    return config
