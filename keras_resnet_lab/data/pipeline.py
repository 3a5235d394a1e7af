"""Batched tf.data pipelines over in-memory uint8 arrays, with the transforms the seeds need.

Images are decoded once and held as uint8; each batch is gathered by index, then converted,
padded, resized, augmented (train only) and standardized as one vectorized step, in parallel
with training (`num_parallel_calls` and `prefetch` set to AUTOTUNE, without the autotuner's
optimization thread: see `PIPELINE_OPTIONS`).
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from ..errors import ConfigError, choices_message

AUGMENTATIONS = ("crop", "flip", "affine", "color", "sharpness")
STATS_SAMPLE = 2000  # images `standardize=True` measures when a split is streamed from files

# torchvision's ImageNet statistics (on images scaled to [0, 1]): the inputs every ImageNet
# checkpoint of torchvision and timm was trained on, and so the one definition the data
# pipeline and exported models apply to pretrained networks (`standardize="imagenet"`).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What happens to a uint8 image before the model sees it; saved with exported models."""

    channels: int
    image_size: tuple  # (height, width) the model receives
    pad: int = 0
    mean: tuple = None
    std: tuple = None
    source_size: tuple = None  # (height, width) of the stored images, before padding and resizing

    def to_dict(self):
        return dataclasses.asdict(self)


def convert_channels(images, channels):
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return tf.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(images)
    raise ConfigError(f"Cannot convert images of {have} channels to {channels}; use 1 or 3.")


def to_model_size(images, prep):
    """uint8 (N, H, W, C) -> float32 in [0, 1], converted, padded and resized as `prep` says.

    Float images are taken as already scaled to [0, 1].
    """
    x = tf.cast(images, tf.float32)
    x = convert_channels(x / 255.0 if images.dtype == tf.uint8 else x, prep.channels)
    if prep.pad:
        x = tf.pad(x, [[0, 0], [prep.pad, prep.pad], [prep.pad, prep.pad], [0, 0]])
    if tuple(x.shape[1:3]) != tuple(prep.image_size):
        x = tf.image.resize(x, prep.image_size)
    return x


def standardize(x, prep):
    if prep.mean is None:
        return x
    return (x - tf.constant(prep.mean, tf.float32)) / tf.constant(prep.std, tf.float32)


def preprocess(images, prep):
    """uint8 (N, H, W, C) -> the float32 model input (no augmentation): what export serves."""
    return standardize(to_model_size(images, prep), prep)


def imagenet_stats(channels):
    """ImageNet's (mean, std) for `channels` inputs.

    1 channel: one mean and std, the averages over RGB (as timm does). A gray image so
    normalized and copied to three channels meets the summed RGB kernel of an adapted first
    conv exactly. More channels repeat the RGB values.
    """
    if channels == 1:
        return (float(np.mean(IMAGENET_MEAN)),), (float(np.mean(IMAGENET_STD)),)
    repeat = -(-channels // 3)
    return tuple((IMAGENET_MEAN * repeat)[:channels]), tuple((IMAGENET_STD * repeat)[:channels])


def standardization(standardize, channels, train_images):
    """(mean, std) for `standardize`: False (none), True (the train split's own per-channel
    statistics), "imagenet" (`imagenet_stats`) or an explicit (mean, std) pair."""
    if standardize is False or standardize is None:
        return None, None
    if standardize is True:
        if hasattr(train_images, "sample"):  # images streamed from files: measured on a sample
            train_images = train_images.sample(STATS_SAMPLE)
        return channel_stats(train_images, channels)
    if standardize == "imagenet":
        return imagenet_stats(channels)
    try:
        mean, std = standardize
        mean, std = (tuple(float(v) for v in np.broadcast_to(s, (channels,))) for s in (mean, std))
    except (TypeError, ValueError):
        raise ConfigError(f"standardize must be False, True, 'imagenet' or a (mean, std) pair of one value or one "
                          f"per channel ({channels}); received {standardize!r}.") from None
    if min(std) <= 0:
        raise ConfigError(f"standardize's std must be above 0; received {std!r}.")
    return mean, std


def channel_stats(x, channels):
    """Per-channel mean and std of images scaled to [0, 1] (uint8 ones divided by 255), after channel conversion."""
    x = x.astype(np.float64) / (255.0 if x.dtype == np.uint8 else 1.0)
    if x.shape[-1] == 3 and channels == 1:
        x = x @ np.array([0.2989, 0.5870, 0.1140])[:, None]
    axes = tuple(range(x.ndim - 1))
    mean, std = x.mean(axis=axes), x.std(axis=axes)
    if x.shape[-1] == 1 and channels == 3:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def parse_augment(augment, channels):
    """`augment` as True (a default set), False/None, a list of names or a comma string."""
    if augment in (None, False, "", "none"):
        return ()
    if augment is True or augment == "default":
        return ("crop", "flip") if channels == 3 else ("affine",)
    names = augment.split(",") if isinstance(augment, str) else list(augment)
    names = tuple(n.strip() for n in names if n.strip())
    for name in names:
        if name not in AUGMENTATIONS:
            raise ConfigError(choices_message("augmentation", name, AUGMENTATIONS))
    return names


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def random_affine(x, seed, degrees=0.0, translate=0.0, scale=0.0, whole_pixels=False):
    """One random rotation, shift and zoom per image, resampled once (bilinear, zero fill).

    Keras' RandomRotation, RandomTranslation and RandomZoom resample once each: chained, they
    blur small digits three times. This builds the combined output->input matrix instead and
    applies it with TensorFlow's projective transform, the op `keras.ops.image.affine_transform`
    runs on the TensorFlow backend (called directly: the input pipeline is TensorFlow's whatever
    backend trains, and Keras's JAX op cannot run inside tf.data).
    """
    n = tf.shape(x)[0]
    height, width = float(x.shape[1]), float(x.shape[2])
    seeds = tf.random.experimental.stateless_split(seed, 4)
    angle = _uniform(seeds[0], [n], -degrees, degrees) * (math.pi / 180.0)
    zoom = _uniform(seeds[1], [n], 1.0 - scale, 1.0 + scale)
    tx = _uniform(seeds[2], [n], -translate, translate) * width
    ty = _uniform(seeds[3], [n], -translate, translate) * height
    if whole_pixels:
        tx, ty = tf.round(tx), tf.round(ty)
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # input = R(-angle) / zoom @ (output - centre - shift) + centre
    a0, a1, b0, b1 = cos, sin, -sin, cos
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros = tf.zeros_like(a0)
    transform = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    moved = tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transform, output_shape=tf.shape(x)[1:-1],
                                                  fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.ensure_shape(moved, x.shape)


def _flip(x, seed):
    flip = _uniform(seed, [tf.shape(x)[0], 1, 1, 1], 0.0, 1.0) < 0.5
    return tf.where(flip, tf.reverse(x, axis=[2]), x)


def _color(x, seed):
    """Per-image brightness, contrast (and saturation for RGB) jitter of +-20% / +-40%."""
    n = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    x = x + _uniform(seeds[0], [n, 1, 1, 1], -0.2, 0.2)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * _uniform(seeds[1], [n, 1, 1, 1], 0.8, 1.2) + mean
    if x.shape[-1] == 3:
        gray = tf.image.rgb_to_grayscale(x)
        x = gray + (x - gray) * _uniform(seeds[2], [n, 1, 1, 1], 0.6, 1.4)
    return tf.clip_by_value(x, 0.0, 1.0)


def _sharpness(x, seed):
    """torchvision's RandomAdjustSharpness(2, p=0.5): blend with PIL's smoothing kernel."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, x.shape[-1], 1])
    blurred = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
    factor = tf.where(_uniform(seed, [tf.shape(x)[0], 1, 1, 1], 0.0, 1.0) < 0.5, 2.0, 1.0)
    return tf.clip_by_value(blurred + factor * (x - blurred), 0.0, 1.0)


AUGMENT_FUNCTIONS = {
    "crop": lambda x, s: random_affine(x, s, translate=0.125, whole_pixels=True),  # pad-and-crop by 1/8
    "flip": _flip,
    "affine": lambda x, s: random_affine(x, s, degrees=10.0, translate=0.1, scale=0.1),
    "color": _color,
    "sharpness": _sharpness,
}


def make_augmenter(names):
    """A function (images in [0, 1], seed pair) -> augmented images, for the named augmentations.

    Stateless: each batch brings its own seed, so parallel calls never share random state and
    the same `seed` gives the same augmentations.
    """
    if not names:
        return None

    def augment(x, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), len(names))
        for index, name in enumerate(names):
            x = AUGMENT_FUNCTIONS[name](x, seeds[index])
        return x

    return augment


def _pipeline_options():
    """tf.data options that keep AUTOTUNE's starting values but not its optimization thread.

    In TensorFlow 2.21, deleting an iterator waits for that thread's current sleep, which grows to
    about half the iterator's lifetime. Keras deletes each epoch's iterator early in the next
    epoch, so 12 of 52 timed MNIST recipe epochs took 9.8-11.0 s instead of 5-6 s
    (`python -m benchmarks.epochs` times the deletion). Without the thread, an AUTOTUNE `map` runs
    as many calls in parallel as there are cores (at most 16).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


PIPELINE_OPTIONS = _pipeline_options()


class EpochCounter:
    """Which epoch's order and augmentations a shuffled train split gives on its next pass.

    Iterated on its own, the split advances it as each pass begins. `fit` instead *pins* it to
    Keras's epoch at every epoch's start: input pipelines may then start passes ahead of time
    (a distribution strategy's prefetching iterators draw a first batch and are thrown away)
    and each pass still reads the epoch being trained.
    """

    def __init__(self):
        self.value = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.pinned = tf.Variable(False, trainable=False, name="epoch_pinned")

    def next_pass(self):
        """In the dataset graph: the epoch this pass reads (advancing the count unless pinned)."""
        return tf.cond(self.pinned, self.value.read_value, lambda: self.value.assign_add(1) - 1)

    def pin(self, epoch):
        self.value.assign(epoch)
        self.pinned.assign(True)

    def release(self, next_epoch):
        """Back to counting passes, the next one being `next_epoch`."""
        self.value.assign(next_epoch)
        self.pinned.assign(False)


def epoch_orders(count, shuffle_seed, epoch):
    """A one-element dataset per pass: (the epoch's order of the `count` examples, its seed base).

    Both depend only on (seed, epoch), the epoch read from the `EpochCounter` when the pass starts.
    """
    seed = tf.constant(shuffle_seed, tf.int64)

    def order_of(current):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=tf.stack([seed, current]))
        return order, seed + (current + 1) * 1_000_003

    return tf.data.Dataset.range(1).map(lambda _: order_of(epoch.next_pass()))


def make_dataset(x, y, prep, batch_size, *, shuffle_seed=None, augmenter=None, epoch=None):
    """A batched, prefetched `tf.data.Dataset` of (float32 image, int label) over uint8 `x`.

    With `shuffle_seed`, epoch `e` (counted by `epoch`, an `EpochCounter` made here when not
    given) has an order and augmentations that depend only on (seed, e): a resumed run sees
    exactly what an uninterrupted run saw, however many iterators Keras creates along the way.
    """
    images, labels = tf.constant(x), tf.constant(y, tf.int32)
    count = len(x)

    def load_batch(index):
        return standardize(to_model_size(tf.gather(images, index), prep), prep), tf.gather(labels, index)

    def load_augmented_batch(index, seed):
        x = augmenter(to_model_size(tf.gather(images, index), prep), seed)
        return standardize(x, prep), tf.gather(labels, index)

    if shuffle_seed is None:
        batches = tf.data.Dataset.range(count).batch(batch_size).map(load_batch, num_parallel_calls=tf.data.AUTOTUNE)
        return batches.prefetch(tf.data.AUTOTUNE).with_options(PIPELINE_OPTIONS)
    epoch = EpochCounter() if epoch is None else epoch

    def epoch_batches(order, batch_seed):
        # One stateless seed pair per batch of the epoch: augmentations depend on (seed, epoch, batch).
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate().map(
            lambda number, index: (index, tf.stack([batch_seed, number])))

    batches = epoch_orders(count, shuffle_seed, epoch).flat_map(epoch_batches)
    batches = batches.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))  # Keras counts steps
    load = load_augmented_batch if augmenter else lambda index, _: load_batch(index)
    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).with_options(PIPELINE_OPTIONS)
