"""`cpu_replicas`: data parallelism across CPU cores, one model replica per core.

On a CPU, TensorFlow splits each op of a training step across its intra-op threads. For the
small batch-norm-free networks it gains little: on 2 cores, mnist_resnet's step took 28.7 ms on
one thread and 20.5 ms on two (`python -m benchmarks.kernels`, README Performance).
With `cpu_replicas=N`, `train` instead runs `tf.distribute.MirroredStrategy` over N logical CPU
devices with one intra-op thread: each replica computes the gradient of 1/N of every batch on
its own core, and the averaged gradient updates the one set of weights. Without batch
normalization this is the same update as one replica on the whole batch (up to float
rounding), except for an epoch's last, partial batch, which each replica averages over its own
share. With it, each replica would normalize with its own part of the batch, so batch-norm
networks are refused.

TensorFlow fixes its devices and threads when it starts, so the setting must come before any
other TensorFlow work in the process: the first `train` call of a fresh process, or the CLI.
It then holds for the rest of the process.
"""

import contextlib

from ..errors import ConfigError
from .compiling import has_batch_norm

_STRATEGIES = {}
_FIX = ("Set cpu_replicas in the first train call of a fresh Python process, before anything else runs "
        "TensorFlow (the CLI does this: keras-resnet-lab train ... --set cpu_replicas={count}), or leave it at 1.")


def configure_cpu_replicas(count):
    """Splits the CPU into `count` logical devices with one intra-op thread each (once per process).

    Raises:
        ConfigError: TensorFlow already started with another configuration, or a GPU is visible.
    """
    import tensorflow as tf

    if tf.config.get_visible_devices("GPU"):
        raise ConfigError(f"cpu_replicas={count} splits training across CPU cores, but a GPU is visible: "
                          "leave cpu_replicas at 1 to train on the GPU.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count and tf.config.threading.get_intra_op_parallelism_threads() == 1:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:
        raise ConfigError(f"cpu_replicas={count} needs to configure TensorFlow before it starts, but this "
                          f"process has already run TensorFlow. {_FIX.format(count=count)}") from None


def replica_scope(count):
    """The scope to build and compile a model in: `count` CPU replicas, or Keras's default for 1."""
    if count == 1:
        return contextlib.nullcontext()
    import tensorflow as tf

    if count not in _STRATEGIES:  # one per process: a model must stay with the strategy it was built in
        configure_cpu_replicas(count)
        devices = [f"/cpu:{index}" for index in range(count)]
        _STRATEGIES[count] = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return _STRATEGIES[count].scope()


def check_replicable(model, count):
    """Refuses models whose batch normalization would see only part of each batch per replica."""
    if count > 1 and has_batch_norm(model):
        raise ConfigError(f"{model.name} uses batch normalization, which with cpu_replicas={count} would "
                          "normalize each replica's part of the batch on its own and so train a different "
                          "model; leave cpu_replicas at 1 for it.")
