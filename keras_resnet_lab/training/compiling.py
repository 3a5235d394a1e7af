"""How `train` compiles a model: optimizer, schedule, loss, metrics, steps per call, precision.

Nothing here imports TensorFlow, so the models compile the same way on Keras's other backends
(the GPU benchmark runs them on JAX where TensorFlow's GPU build is not installed).
"""

import contextlib
import copy
import math

import keras

from .schedules import build_schedule


def gpu_available():
    """Whether the Keras backend sees a GPU."""
    try:
        return bool(keras.distribution.list_devices("gpu"))
    except RuntimeError:  # JAX raises when it has no GPU platform
        return False


@contextlib.contextmanager
def dtype_policy(mixed_precision):
    """Mixed precision for the run only: float16 on GPUs, bfloat16 on CPUs."""
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16" if gpu_available() else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_optimizer(config, learning_rate):
    """The Keras optimizer `config` names; weight decay skips biases and batch-norm parameters.

    A serialized optimizer object (`config.optimizer` as a dict) is rebuilt with its own settings
    and `learning_rate` (a number or a schedule) in place of its rate.
    """
    if isinstance(config.optimizer, dict):
        spec = copy.deepcopy(config.optimizer)
        spec["config"]["learning_rate"] = (keras.optimizers.schedules.serialize(learning_rate)
                                           if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
                                           else learning_rate)
        return keras.optimizers.deserialize(spec)
    common = dict(learning_rate=learning_rate, clipnorm=config.clipnorm, clipvalue=config.clipvalue,
                  weight_decay=config.weight_decay or None)
    if config.ema_momentum:
        common.update(use_ema=True, ema_momentum=config.ema_momentum)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=config.momentum, nesterov=config.nesterov, **common)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(**common)
    elif config.optimizer == "adamw":
        common["weight_decay"] = config.weight_decay or 0.004
        optimizer = keras.optimizers.AdamW(**common)
    else:
        optimizer = keras.optimizers.RMSprop(momentum=config.momentum, **common)
    if common["weight_decay"]:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def learning_rate_for(config, spans, num_train_examples):
    """A number (plateau: the first phase's rate, lowered by its callback), the user's own
    schedule object, or the `PhasedSchedule` of `config`'s phases and shape."""
    if isinstance(config.learning_rate, dict):
        return keras.optimizers.schedules.deserialize(copy.deepcopy(config.learning_rate))
    if config.schedule == "plateau":
        return spans[0][2]
    return build_schedule(config, spans, _steps_per_epoch(num_train_examples))


def _steps_per_epoch(num_train_examples):
    return lambda batch_size: math.ceil(num_train_examples / batch_size)


def default_steps_per_execution(model):
    """Steps per `fit` call, measured on 2 CPU cores (see README, Performance).

    16 steps per call speed the small batch-norm-free nets up (mnist_resnet 3,200 -> 5,200
    images/s). The batch-norm ResNets gain nothing measurable from it with the fused batch norm
    (cifar_resnet20: 677 at 1, 672 at 16), so they keep one step per call, and with it a
    progress bar and NaN check after every step.
    """
    return 1 if has_batch_norm(model) or mirrored() else 16


def mirrored():
    """Whether a TensorFlow MirroredStrategy over several devices is in scope (Keras 3's multi-step
    loop fails under it: such runs take one step per call)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1


def has_batch_norm(model):
    """Whether any layer of `model` is a batch normalization."""
    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def make_loss(config):
    """Sparse categorical cross-entropy on logits; with label smoothing, its one-hot form."""
    if config.label_smoothing:
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_model(model, config, spans, num_train_examples, *, optimizer=None):
    """Compiles `model` as every fit of this package does (optimizer, schedule, loss, metrics).

    `num_train_examples` sets the schedule's steps per epoch. `optimizer`: keep this optimizer
    (its step count, so the schedule's position, and its moments), as a phase that changes
    which layers train does.
    """
    model.compile(
        optimizer=optimizer or make_optimizer(config, learning_rate_for(config, spans, num_train_examples)),
        loss=make_loss(config), metrics=["accuracy"],
        steps_per_execution=config.steps_per_execution or default_steps_per_execution(model),
        # On JAX a step without jit runs op by op; `jit_compile` chooses XLA on TensorFlow.
        jit_compile=config.jit_compile or keras.backend.backend() == "jax",
    )
