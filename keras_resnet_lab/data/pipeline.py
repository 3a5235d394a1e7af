"""Batched tf.data pipelines over in-memory uint8 arrays, with the transforms the seeds need.

Images are decoded once and held as uint8; each batch is gathered by index, then converted,
padded, resized, augmented (train only) and standardized as one vectorized step, in parallel
with training (`num_parallel_calls` and `prefetch` set to AUTOTUNE).
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from ..errors import ConfigError, choices_message

AUGMENTATIONS = ("crop", "flip", "affine", "color", "sharpness")


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


def preprocess(images, prep, augmenter=None):
    """uint8 (N, H, W, C) -> float32 model input, following `prep` (a `Preprocessing`)."""
    x = convert_channels(tf.cast(images, tf.float32) / 255.0, prep.channels)
    if prep.pad:
        x = tf.pad(x, [[0, 0], [prep.pad, prep.pad], [prep.pad, prep.pad], [0, 0]])
    if tuple(x.shape[1:3]) != tuple(prep.image_size):
        x = tf.image.resize(x, prep.image_size)
    if augmenter is not None:
        x = augmenter(x, training=True)
    if prep.mean is not None:
        x = (x - tf.constant(prep.mean, tf.float32)) / tf.constant(prep.std, tf.float32)
    return x


def channel_stats(x, channels):
    """Per-channel mean and std of uint8 images after scaling to [0, 1] (and channel conversion)."""
    x = x.astype(np.float64) / 255.0
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


def make_augmenter(names, image_size, seed):
    """Keras preprocessing layers for the named augmentations (seed 003's set), per image."""
    if not names:
        return None
    height, width = image_size
    pipeline = []
    for name in names:
        if name == "crop":  # pad-and-crop by up to 1/8 of the side, per image (RandomCrop is per batch)
            pipeline.append(keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant", seed=seed))
        elif name == "flip":
            pipeline.append(keras.layers.RandomFlip("horizontal", seed=seed))
        elif name == "affine":
            pipeline += [
                keras.layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed),
                keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
                keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
            ]
        elif name == "color":
            pipeline += [
                keras.layers.RandomBrightness(0.2, value_range=(0, 1), seed=seed),
                keras.layers.RandomContrast(0.2, value_range=(0, 1), seed=seed),
            ]
        elif name == "sharpness":
            pipeline.append(keras.layers.RandomSharpness(0.5, value_range=(0, 1), seed=seed))
    return keras.layers.Pipeline(pipeline, name="augment")


def make_dataset(x, y, prep, batch_size, *, shuffle_seed=None, augmenter=None):
    """A batched, prefetched `tf.data.Dataset` of (float32 image, int label) over uint8 `x`."""
    images, labels = tf.constant(x), tf.constant(y, tf.int32)
    indices = tf.data.Dataset.range(len(x))
    if shuffle_seed is not None:
        indices = indices.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load_batch(index):
        return preprocess(tf.gather(images, index), prep, augmenter), tf.gather(labels, index)

    return (
        indices.batch(batch_size)
        .map(load_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
