"""Datasets larger than memory: read from their files or records as training goes, not decoded up front.

`StreamedImages` stands where a split's uint8 array would stand (it has the array's `shape`, `dtype`
and `len`, and indexing picks images), so splitting, subsets and the data checks treat both alike;
`FileImages` reads image files, `RecordImages` the records of a tensorflow-datasets ArrayRecord
split. The pipeline shuffles their *indices* for each epoch (a full permutation by (seed, epoch),
as the in-memory pipeline does, with no buffer of images), batches the indices (a process of a
several-process run keeps only its part of each batch), then reads, decodes and resizes in
parallel, augments and standardizes. Only the batches in flight are in memory, whatever the
dataset's size; `with_disk_cache` decodes once into an uncompressed file read on later epochs.
"""

import copy
import hashlib
import os
import sys
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..errors import ConfigError
from ..files import atomic_path
from .images import files_key
from .pipeline import PIPELINE_OPTIONS, EpochCounter, epoch_orders, standardize, to_model_size

MEMORY_ENV = "KERAS_RESNET_LAB_MEMORY_BUDGET"  # bytes of decoded images `in_memory="auto"` holds in memory
DEFAULT_BUDGET_FRACTION = 0.25  # of the machine's memory


class StreamedImages:
    """A split's images left where they are (files, dataset records) and decoded when read.

    It stands where a split's uint8 array would stand: `shape`, `dtype`, `len`, and indexing
    (an int gives one decoded image, anything else a subset), so splitting, subsets and the
    data checks treat both alike. `keys` name the images (file paths, record numbers); with a
    disk cache (`with_disk_cache`) they were decoded once into one uncompressed file that
    batches are copied from, `rows` being this subset's rows in it.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, keys, image_size, channels, cache=None, rows=None):
        self.keys = np.asarray(keys)
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = int(channels)
        self.cache = cache  # a read-only np.memmap of decoded images, or None
        self.rows = np.arange(len(self.keys)) if rows is None else np.asarray(rows)

    @property
    def shape(self):
        return (len(self.keys), *self.image_size, self.channels)

    def __len__(self):
        return len(self.keys)

    def _with(self, keys, cache, rows):
        subset = copy.copy(self)
        subset.keys, subset.cache, subset.rows = np.asarray(keys), cache, np.asarray(rows)
        return subset

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.read([index % len(self)])[0]
        return self._with(self.keys[index], self.cache, self.rows[index])

    def __array__(self, dtype=None, copy=None):
        return self.read(np.arange(len(self))).astype(dtype or np.uint8)

    def sample(self, count, seed=0):
        """Up to `count` decoded images chosen at random: statistics without reading everything."""
        return self.read(np.sort(np.random.default_rng(seed).permutation(len(self))[:count]))

    def read(self, positions):
        """The decoded images at `positions` (a NumPy array, eagerly)."""
        if not len(positions):
            return np.zeros((0, *self.image_size, self.channels), np.uint8)
        return self.read_batch(tf.constant(np.asarray(positions, np.int64))).numpy()

    def read_batch(self, positions):
        """In the dataset graph: the uint8 images at `positions` (int64), one batch."""
        if self.cache is not None:  # decoded once: copy the rows
            images = tf.numpy_function(lambda p: self.cache[self.rows[p]], [positions], tf.uint8, stateful=False)
            return tf.ensure_shape(images, (None, *self.image_size, self.channels))
        spec = tf.TensorSpec((*self.image_size, self.channels), tf.uint8)
        return tf.map_fn(self.decode, tf.gather(self.keys, positions), fn_output_signature=spec,
                         parallel_iterations=16)

    def decode(self, key):
        """In the dataset graph: one key -> uint8 (height, width, channels) at `image_size`."""
        raise NotImplementedError

    def content_key(self):
        """What these images are, for the run identity and the disk cache's name."""
        raise NotImplementedError

    def resized(self, image):
        image = tf.image.resize(image, self.image_size, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    def with_disk_cache(self, cache_dir):
        """These images decoded once (in parallel, with a progress bar) into an uncompressed file
        under `cache_dir/streamed/`, named by `content_key`, written under a temporary name then
        renamed; later epochs and runs copy batches from it instead of decoding."""
        height, width = self.image_size
        digest = hashlib.sha256(self.content_key().encode()).hexdigest()[:32]
        target = Path(cache_dir) / "streamed" / f"{digest}-{len(self)}x{height}x{width}x{self.channels}.u8"
        if not target.is_file():
            self._write_cache(target)
        return self._with(self.keys, np.memmap(target, np.uint8, "r", shape=self.shape), np.arange(len(self)))

    def _write_cache(self, target):
        from keras.utils import Progbar

        print(f"Decoding {len(self):,} images into {target} (once; later epochs and runs read it)")
        progress = Progbar(len(self), unit_name="image", verbose=1 if sys.stdout.isatty() else 2)
        decoded = tf.data.Dataset.range(len(self)).batch(64).map(
            self.read_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        with atomic_path(target) as tmp:
            array = np.memmap(tmp, np.uint8, "w+", shape=self.shape)
            done = 0
            for batch in decoded.as_numpy_iterator():
                array[done:done + len(batch)] = batch
                done += len(batch)
                progress.update(done)
            array.flush()
            del array


class FileImages(StreamedImages):
    """The images of one split as image files (`keys` are their paths)."""

    def __init__(self, paths, image_size, channels, cache=None, rows=None):
        super().__init__([str(p) for p in paths], image_size, channels, cache, rows)

    @property
    def paths(self):
        return self.keys

    def decode(self, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=self.channels, expand_animations=False,
                                   dtype=tf.uint8)
        return self.resized(image)

    def content_key(self):
        """Every file's path, size and modification time: what the run identity keys on."""
        return "files:" + files_key(self.paths, f"{self.image_size}{self.channels}")


def memory_budget():
    """Bytes of decoded images a dataset may hold in memory: `$KERAS_RESNET_LAB_MEMORY_BUDGET`, else a
    quarter of the machine's memory."""
    text = os.environ.get(MEMORY_ENV)
    if text:
        units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
        try:
            value = float(text[:-1]) * units[text[-1].lower()] if text[-1].lower() in units else float(text)
        except ValueError:
            value = -1
        if value <= 0:
            raise ConfigError(f"{MEMORY_ENV} must be a number of bytes such as 2G or 500M; received {text!r}.")
        return int(value)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * DEFAULT_BUDGET_FRACTION)


def make_streaming_dataset(files, y, prep, batch_size, *, shuffle_seed=None, augmenter=None, epoch=None,
                           batches=None):
    """The batched pipeline over `files` (a `StreamedImages`): what `make_dataset` is for arrays.

    `batches`, if given, transforms the batches of file indices before any file is read (it sees
    (indices, labels) batches, or (indices, labels, augmentation seeds) when shuffled, and may drop,
    pad (adding weights) or cut them): a process of a several-process run reads only its part of
    each batch.
    """
    labels, count = tf.constant(y, tf.int32), len(files)
    batches = batches or (lambda dataset: dataset)

    def augment(x, seeds):
        """Augments the rows as they would be in the whole batch: a cut batch (this process's rows)
        is placed at its offset in a batch of the whole size, so each image gets the same crop or
        flip however the batch is shared out."""
        offset, rows = seeds[0, 2], seeds[0, 3]
        whole = tf.scatter_nd(offset + tf.range(tf.shape(x)[0], dtype=tf.int64)[:, None], x,
                              tf.concat([[rows], tf.shape(x, tf.int64)[1:]], 0))
        return augmenter(whole, seeds[0, :2])[offset:offset + tf.cast(tf.shape(x)[0], tf.int64)]

    def finish(indices, labels_, seeds=None, *weights):
        x = to_model_size(files.read_batch(indices), prep)
        x = standardize(augment(x, seeds) if augmenter and seeds is not None else x, prep)
        return (x, labels_, *weights)

    def index_batches(order):
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(lambda i: (i, tf.gather(labels, i)))

    if shuffle_seed is None:
        indices = batches(index_batches(tf.range(count, dtype=tf.int64)))
        read_unshuffled = (lambda i, l, *w: finish(i, l, None, *w))
        return indices.map(read_unshuffled, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE).with_options(PIPELINE_OPTIONS)
    epoch = EpochCounter() if epoch is None else epoch

    def epoch_batches(order, batch_seed):
        def with_seed(number, batch):  # per row: the batch's seed pair, the row's place and the batch's size
            indices, labels_ = batch
            rows = tf.shape(indices, tf.int64)[0]
            shared = tf.tile(tf.stack([batch_seed, number, 0, rows])[None], [rows, 1])
            place = tf.pad(tf.range(rows, dtype=tf.int64)[:, None], [[0, 0], [2, 1]])  # into column 2
            return indices, labels_, shared + place

        return index_batches(order).enumerate().map(with_seed)

    indices = epoch_orders(count, shuffle_seed, epoch).flat_map(epoch_batches)
    indices = batches(indices.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size))))
    return indices.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).with_options(
        PIPELINE_OPTIONS)


class RecordImages(StreamedImages):
    """The images of one split of a tensorflow-datasets dataset stored as ArrayRecord, read by record
    number (`keys`) with random access, so a split streams exactly as a folder of files does."""

    def __init__(self, open_source, identity, record_numbers, image_size, channels, cache=None, rows=None):
        super().__init__(np.asarray(record_numbers, np.int64), image_size, channels, cache, rows)
        self.open_source = open_source  # opens the split's random-access source (once, on first read)
        self.identity = identity
        self._source = None
        self._lock = threading.Lock()

    def _image(self, number):
        if self._source is None:
            with self._lock:
                if self._source is None:
                    self._source = self.open_source()
        return np.asarray(self._source[int(number)]["image"], np.uint8)

    def decode(self, number):
        image = tf.numpy_function(self._image, [number], tf.uint8, stateful=False)
        return self.resized(tf.ensure_shape(image, (None, None, self.channels)))

    def content_key(self):
        """The dataset's name, version, split and stored files (sizes and times), and the records taken."""
        return f"records:{self.identity}:{hashlib.sha256(self.keys.tobytes()).hexdigest()}"
