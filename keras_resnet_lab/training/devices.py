"""`devices`: one run on several local devices at once (GPUs, or virtual CPU devices).

TensorFlow runs the devices with `tf.distribute.MirroredStrategy`, JAX with
`keras.distribution.DataParallel`. Either way each batch of `batch_size` examples (the *global*
batch) is split evenly across the devices and the gradients are combined over the whole batch,
so N devices compute the update one device computes on that batch: the learning rate and the
schedule need no change (to use N times the memory, multiply `batch_size` by N and, for SGD,
the learning rate with it). By default a run uses every local device; `devices=1` opts out.

Batch normalization: on JAX the batch statistics are those of the global batch, as on one
device; TensorFlow's MirroredStrategy normalizes each device's part with its own statistics
(as PyTorch's DDP without SyncBatchNorm).

JAX needs every batch to divide evenly across the devices: a last, partial training batch of an
epoch that does not is dropped, and the last validation or test batch is padded with examples of weight 0
(so accuracy counts only real examples).
"""

import contextlib
import os

import keras

from ..errors import ConfigError

# Keras's variables for a multi-process run (keras.distribution.initialize reads them).
PROCESS_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")
HEARTBEAT_ENV = "KERAS_RESNET_LAB_HEARTBEAT_S"  # seconds without a heartbeat before a process counts as dead
DEFAULT_HEARTBEAT_S = 30


def start_processes():
    """Joins this process to a run of several processes when Keras's variables say so.

    JAX only: Keras 3 does not train under TensorFlow's MultiWorkerMirroredStrategy
    (keras#20585), so a multi-process request on TensorFlow is refused at once.
    """
    count = os.environ.get(PROCESS_ENV[1])
    if not count or int(count) <= 1:
        return
    if keras.backend.backend() != "jax":
        raise ConfigError(f"{PROCESS_ENV[1]}={count} asks for a run of several processes, which Keras 3 cannot "
                          f"train on its {keras.backend.backend()} backend (MultiWorkerMirroredStrategy fails: "
                          f"keras-team/keras#20585). Set KERAS_BACKEND=jax: every process then trains one model "
                          f"through keras.distribution.")
    missing = [name for name in PROCESS_ENV if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"A run of {count} processes needs {', '.join(missing)} too (--coordinator HOST:PORT, "
                          f"--num-processes N, --process-id I on the command line).")
    import jax

    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices talk through gloo
    # What keras.distribution.initialize() does, plus how soon a dead process is noticed.
    jax.distributed.initialize(
        coordinator_address=os.environ[PROCESS_ENV[0]].split(",")[0], num_processes=int(count),
        process_id=int(os.environ[PROCESS_ENV[2]]),
        heartbeat_timeout_seconds=int(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S)),
    )


def process_count():
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index():
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def barrier(name):
    """Waits until every process of the run reaches `name` (nothing with one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def local_devices():
    """The devices a run trains on: every GPU, else every (virtual) CPU device; on JAX with several
    processes, those of every process."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        everyone = jax.devices() if jax.process_count() > 1 else jax.local_devices()
        gpus = [d for d in everyone if d.platform == "gpu"]
        return [f"{d.platform}:{d.id}" for d in (gpus or everyone)]
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))]
    return ["cpu:0"]


def device_count(requested):
    """How many devices a run with `devices=requested` uses (None: all of `local_devices()`)."""
    available = local_devices()
    if requested is None:
        return len(available)
    if requested > len(available):
        raise ConfigError(f"devices={requested}, but this process sees {len(available)} ({', '.join(available)}). "
                          f"Use devices={len(available)} or fewer (unset: all of them).")
    return requested


def check_batch_sizes(count, batch_sizes):
    """Refuses a batch size the devices cannot share evenly."""
    for batch_size in batch_sizes:
        if batch_size % count:
            raise ConfigError(f"batch_size {batch_size} cannot be split evenly across {count} devices: use a multiple "
                              f"of {count} (the batch size is the global batch of all devices), or devices=1.")


@contextlib.contextmanager
def distributed(count):
    """Models built, compiled, fitted and evaluated inside this block use `count` local devices."""
    if count == 1:
        yield
        return
    devices = local_devices()[:count]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(devices).scope():
            yield
        return
    previous = keras.distribution.distribution()
    distribution = keras.distribution.DataParallel(devices=devices)
    distribution.auto_shard_dataset = False  # each process's batches are already its part (`even_batches`)
    keras.distribution.set_distribution(distribution)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def shards():
    """How many parts each batch is cut into on JAX's devices now (1 without a distribution)."""
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if distribution is None:
        return 1
    return int(distribution.device_mesh.devices.size)


def even_batches(dataset, *, training, own_part=True):
    """`dataset` with batches JAX can shard: full ones only (training), or padded with weight 0;
    with several processes (and `own_part`), each process's part of every batch.

    Each element is a tuple of tensors batched along their first axis (images and labels, or a
    streamed split's file indices, labels and augmentation seeds: then only this process's files
    are read)."""
    count = shards()
    if count == 1 or dataset is None:
        return dataset
    import tensorflow as tf

    if training:
        dataset = dataset.filter(lambda first, *rest: tf.shape(first)[0] % count == 0)
    else:
        dataset = dataset.map(_padder(count))
    return _own_part(dataset) if own_part and process_count() > 1 else dataset


def gathered_logits(model, dataset):
    """The logits of every batch of `dataset` (this process's parts) for the whole batch, on every
    process: a predict for runs of several JAX processes, whose outputs no single process holds."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = keras.distribution.distribution().device_mesh.backend_mesh
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    logits = []
    for images in _own_part(dataset).as_numpy_iterator():
        batch = jax.make_array_from_process_local_data(sharding, images)
        outputs = model(batch, training=False)
        logits.append(np.asarray(multihost_utils.process_allgather(outputs, tiled=True)))
    return np.concatenate(logits)


def _own_part(dataset):
    import tensorflow as tf

    processes, index = process_count(), process_index()

    def part(*batch):
        size = tf.shape(batch[0])[0] // processes
        parts = tuple(tensor[index * size:(index + 1) * size] for tensor in batch)
        return parts if len(parts) > 1 else parts[0]

    return dataset.map(part)


def _padder(count):
    import tensorflow as tf

    def padded(tensor, extra):
        return tf.concat([tensor, tf.zeros(tf.concat([[extra], tf.shape(tensor)[1:]], 0), tensor.dtype)], 0)

    def pad(*batch):
        size = tf.shape(batch[0])[0]
        extra = (count - size % count) % count
        weights = tf.concat([tf.ones([size]), tf.zeros([extra])], 0)
        return (*(padded(tensor, extra) for tensor in batch), weights)

    return pad
