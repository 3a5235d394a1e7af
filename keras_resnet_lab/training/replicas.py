"""`cpu_replicas`: each training batch split into one part per CPU core, the parts run side by side.

On a CPU, TensorFlow splits each op of a training step across its intra-op threads. For the
small batch-norm-free networks that gains little: on 2 cores, mnist_resnet's step took 28.7 ms on
one thread and 20.5 ms on two (`python -m benchmarks.kernels`, README Performance).

With `cpu_replicas=N`, the training step instead computes the forward and backward pass of each
1/N of the batch as its own chain of ops. TensorFlow runs one op per core (one intra-op thread,
N inter-op threads), so the N chains run side by side. The parts' predictions are concatenated
before the loss, so the loss, its gradient, the metrics and the update are those of the whole
batch, as with one replica (up to float rounding); the weights are shared, not copied. Dropout
draws its own mask for each part. Batch normalization would normalize each part with its own
statistics and so train a different model: batch-norm networks are refused. On 2 cores it took
mnist_resnet from 6,427 to 8,507 images/s (`python -m benchmarks.run`).

TensorFlow fixes its thread pools when it starts, so the setting must come before any other
TensorFlow work in the process: the first `train` call of a fresh process, the CLI, or
`configure_cpu_replicas` at the top of a script. It then holds for the rest of the process.
"""

import contextlib
import os

from ..errors import ConfigError
from .compiling import has_batch_norm

_FIX = ("Call keras_resnet_lab.configure_cpu_replicas({count}) at the start of the process, before anything "
        "else runs TensorFlow (the CLI does this: keras-resnet-lab train ... --set cpu_replicas={count}), or "
        "leave cpu_replicas at 1.")


def configure_cpu_replicas(count):
    """Sets TensorFlow to run one op per core (1 intra-op thread) and `count` ops side by side.

    Call it before anything else runs TensorFlow; `train` calls it with `cpu_replicas`. A count
    of 1, or a second call that asks for no more parts than the first, changes nothing.

    Raises:
        ConfigError: TensorFlow already started with other thread pools, or a GPU is visible.

    Example:
        >>> import keras_resnet_lab as lab
        >>> lab.configure_cpu_replicas(2)  # first thing in the script
        >>> model = lab.build_model("mnist_resnet")
        >>> lab.train(model, "mnist", cpu_replicas=2)
    """
    if count == 1:
        return
    import tensorflow as tf

    if tf.config.get_visible_devices("GPU"):
        raise ConfigError(f"cpu_replicas={count} splits training across CPU cores, but a GPU is visible: "
                          "leave cpu_replicas at 1 to train on the GPU.")
    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() == 1 and threading.get_inter_op_parallelism_threads() >= count:
        return
    try:
        threading.set_intra_op_parallelism_threads(1)
        threading.set_inter_op_parallelism_threads(count)
    except RuntimeError:
        raise ConfigError(f"cpu_replicas={count} needs to set TensorFlow's thread pools before it starts, but "
                          f"this process has already run TensorFlow. {_FIX.format(count=count)}") from None


AUTO_CORE_COUNTS = (2,)  # where one part per core was measured faster for every batch-norm-free model


def auto_cpu_replicas(config):
    """The `cpu_replicas` the command line's `train` uses when none is given.

    One part per core where that was measured faster (2-core CPUs: baseline_cnn 1.4-1.9x,
    mnist_resnet 1.2x, `python -m benchmarks.run`) for a registered model without batch norm,
    batches of at least one image per core, no GPU, and a process whose TensorFlow has not started
    yet (it configures the thread pools then); else 1. It suits a process that trains one such
    model (the command line's): the pools hold for the whole process and would slow a batch-norm
    model trained after it, so the Python API keeps 1 unless asked.
    """
    import keras

    from ..models import get_spec

    if keras.backend.backend() != "tensorflow" or (config.devices or 1) > 1:
        return 1  # TensorFlow's thread pools only, and never with a run on several devices
    cores = os.cpu_count() or 1
    batches = [batch for *_, batch in config.resolved_phases()]
    if cores not in AUTO_CORE_COUNTS or min(batches) < cores:
        return 1
    if get_spec(config.model).uses_batch_norm(config.model_options):
        return 1
    try:
        configure_cpu_replicas(cores)
    except ConfigError:  # a GPU, or TensorFlow already running with its default pools
        return 1
    return cores


def check_replicable(model, count):
    """Refuses models whose batch normalization would see only part of each batch."""
    if count > 1 and has_batch_norm(model):
        raise ConfigError(f"{model.name} uses batch normalization, which with cpu_replicas={count} would "
                          "normalize each part of the batch on its own and so train a different model; "
                          "leave cpu_replicas at 1 for it.")


@contextlib.contextmanager
def split_batches(model, count):
    """Within the block, `model`'s training forward pass runs on `count` parts of each batch.

    Inference (`training=False`) is unchanged. Outside the block `model` is as it was, except
    that a train function Keras traced inside it stays cached and keeps splitting.
    """
    if count == 1:
        yield model
        return
    import tensorflow as tf

    check_replicable(model, count)
    whole = model.call

    def call(inputs, training=None, mask=None):
        if not training or mask is not None:
            return whole(inputs, training=training, mask=mask)
        size = tf.shape(tf.nest.flatten(inputs)[0])[0]
        outputs = [whole(part, training=True) for part in _parts(inputs, size, count)]
        return tf.nest.map_structure(lambda *pieces: tf.concat(pieces, axis=0)[:size], *outputs)

    model.call = call  # Layer.__call__ looks `call` up on the instance
    try:
        yield model
    finally:
        del model.call


def _parts(inputs, size, count):
    """`inputs` (a tensor or a structure of them) cut along the batch axis into `count` slices.

    An epoch's last batch may hold fewer examples than there are parts, and a convolution refuses
    an empty batch, so such a batch is padded with zeros to `count` examples; `call` drops the
    padding's predictions, which so add nothing to the loss or its gradient.
    """
    import tensorflow as tf

    missing = tf.maximum(count - size, 0)
    padded = tf.nest.map_structure(
        lambda tensor: tf.pad(tensor, [[0, missing]] + [[0, 0]] * (len(tensor.shape) - 1)), inputs)
    total = size + missing
    bounds = [total * index // count for index in range(count + 1)]
    return [tf.nest.map_structure(lambda tensor, i=i: tensor[bounds[i]:bounds[i + 1]], padded) for i in range(count)]
