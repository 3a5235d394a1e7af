"""Datasets as batched tf.data pipelines: `load_dataset(name, ...)` returns a `DatasetBundle`.

This module imports no model code.
"""

import inspect
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, choices_message
from .bundle import DatasetBundle, assemble, carve_validation
from .pipeline import Preprocessing, parse_augment, standardization
from .streaming import StreamedImages
from .user import as_bundle
from .archives import default_cache_dir
from .sources import (
    CIFAR10_CLASSES, DATA_ENV, load_cifar, load_digits, load_image_folder, load_mnist_style, load_tfds_named,
    search_dirs,
)

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "digits", "image_folder")
TFDS_PREFIX = "tfds:"  # "tfds:NAME": any image classification dataset of tensorflow-datasets


def _subset_per_class(x, y, per_class, seed):
    order = np.random.default_rng(seed).permutation(len(y))
    keep = np.concatenate([order[y[order] == c][:per_class] for c in np.unique(y)])
    keep.sort()
    return x[keep], y[keep]


def _read_raw(name, data_dir, path, image_size, cache_dir, on_bad_file, download, in_memory, stream_cache):
    folder_options = dict(image_size=image_size, cache_dir=cache_dir, on_bad_file=on_bad_file, in_memory=in_memory,
                          stream_cache=stream_cache)
    if name.startswith(TFDS_PREFIX):
        return load_tfds_named(name[len(TFDS_PREFIX):], data_dir, image_size=image_size, in_memory=in_memory,
                               stream_cache=stream_cache, cache_dir=cache_dir or default_cache_dir(),
                               download=download)
    if name in ("mnist", "fashion_mnist"):
        return load_mnist_style(name, data_dir, MNIST_CLASSES if name == "mnist" else FASHION_CLASSES, download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_dir, download, folder_options)
    if name == "digits":
        return load_digits(seed=0)
    if path is None:
        raise ConfigError("load_dataset('image_folder') needs path= a folder or a .tar/.tar.gz/.zip archive.")
    return load_image_folder(_resolve_path(path, data_dir), **folder_options)


def _resolve_path(path, data_dir):
    """`path` as given if it exists, else relative to `data_dir` or `$KERAS_RESNET_LAB_DATA`."""
    path = Path(path).expanduser()
    if path.exists() or path.is_absolute():
        return path
    for folder in search_dirs(data_dir):
        if (folder / path).exists():
            return folder / path
    return path


def _check_settings(name, batch_size, channels, pad, on_bad_file, image_size, in_memory, stream_cache):
    if in_memory not in ("auto", True, False):
        raise ConfigError(f"in_memory must be 'auto', True or False; received {in_memory!r}.")
    if not isinstance(stream_cache, bool):
        raise ConfigError(f"stream_cache must be True or False; received {stream_cache!r}.")
    if name not in DATASETS and not (isinstance(name, str) and name.startswith(TFDS_PREFIX) and len(name) > 5):
        raise ConfigError(choices_message("dataset", name, (*DATASETS, "tfds:NAME")))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; received {batch_size!r}.")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3 (or None to keep the data's); received {channels!r}.")
    if not isinstance(pad, int) or pad < 0:
        raise ConfigError(f"pad must be a non-negative integer; received {pad!r}.")
    if on_bad_file not in ("warn", "error"):
        raise ConfigError(choices_message("on_bad_file", on_bad_file, ("warn", "error")))
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ConfigError(f"image_size must be (height, width); received {image_size!r}.")


def load_dataset(
    name,
    *,
    data_dir=None,
    path=None,
    batch_size=128,
    image_size=None,
    channels=None,
    pad=0,
    standardize=False,
    validation_split=0.0,
    augment=False,
    train_subset_per_class=None,
    seed=0,
    cache_dir=None,
    on_bad_file="warn",
    download=True,
    in_memory="auto",
    stream_cache=False,
):
    """Loads a dataset as batched tf.data pipelines with the transforms the seeds need.

    Args:
        name: "mnist", "fashion_mnist", "cifar10", "cifar100", "digits" (scikit-learn's 8x8
            digits, split 80/20 with a fixed seed), "image_folder" (with `path=`) or "tfds:NAME"
            (any image classification dataset of tensorflow-datasets, e.g. "tfds:cats_vs_dogs";
            a prepared copy under `data_dir` is used, else TFDS's folder, else it is downloaded).
        data_dir: a folder holding the standard files (mnist.npz or IDX .gz files; the official
            CIFAR archive or batches folder, or an image-folder archive such as
            cifar10-jpeg.tar.gz). Defaults to `$KERAS_RESNET_LAB_DATA`; with neither, and no
            local copy, tensorflow-datasets downloads it.
        path: for "image_folder": a folder of `<split>/<class>/<image>` or a .tar/.tar.gz/.zip.
        batch_size: examples per batch.
        image_size: (height, width) the model receives (resized after padding).
        channels: 1 or 3 to convert grayscale <-> RGB; None keeps the data's.
        pad: zero-padding on each side (2 turns 28x28 MNIST into 32x32, as report 002).
        standardize: False (scale to [0, 1]), True (per-channel statistics of the train split),
            "imagenet" (ImageNet's mean and std, what pretrained ResNets expect) or a
            (mean, std) pair.
        validation_split: fraction of train held out (stratified, by `seed`) for model selection.
        augment: False, True (crop+flip for RGB, affine for grayscale) or names from
            "crop", "flip", "affine", "color", "sharpness"; applied to the train split only.
        train_subset_per_class: keep only N training examples of each class (report 003c).
        seed: shuffling, validation split, subset and augmentation seed.
        cache_dir: where archives are extracted and decoded images cached.
        on_bad_file: "warn" (skip unreadable images, naming them) or "error".
        download: allow tensorflow-datasets to download when no local copy exists.
        in_memory: for image folders and archives (cats vs dogs, CIFAR as JPEGs) and "tfds:"
            datasets stored as ArrayRecord: True decodes
            every image up front (cached by content); False streams them from their files as
            training reads them, with only the batches in flight in memory; "auto" (default)
            streams when the decoded images would exceed `$KERAS_RESNET_LAB_MEMORY_BUDGET`
            (bytes, e.g. 8G; default a quarter of the machine's memory).
        stream_cache: for streamed folders: decode every image once into one uncompressed file
            under `cache_dir` (keyed on the files' paths, sizes and times) and read batches from
            it, instead of decoding each file every epoch. Needs disk for the decoded pixels.

    Returns:
        A `DatasetBundle`.

    Example:
        >>> data = load_dataset("mnist", data_dir="data", validation_split=0.1)
        >>> data.num_examples
        {'train': 54000, 'validation': 6000, 'test': 10000}
    """
    image_size = tuple(image_size) if image_size is not None else None
    _check_settings(name, batch_size, channels, pad, on_bad_file, image_size, in_memory, stream_cache)
    decode_size = image_size if name == "image_folder" or not pad else None
    raw = _read_raw(name, data_dir, path, decode_size, cache_dir, on_bad_file, download, in_memory,
                    stream_cache).check()
    if in_memory is False and not isinstance(raw.x_train, StreamedImages):
        raise ConfigError(f"in_memory=False streams image folders and archives; {name} was read from "
                          f"{raw.source}, one array file that is loaded whole. Use in_memory='auto' or True.")
    x_train, y_train = raw.x_train, raw.y_train
    if train_subset_per_class:
        x_train, y_train = _subset_per_class(x_train, y_train, train_subset_per_class, seed)
    arrays = {"train": (x_train, y_train), "test": (raw.x_test, raw.y_test)}
    if validation_split:
        arrays["train"], arrays["validation"] = carve_validation(x_train, y_train, validation_split, seed)
    channels = channels or x_train.shape[-1]
    height, width = x_train.shape[1] + 2 * pad, x_train.shape[2] + 2 * pad
    mean, std = standardization(standardize, channels, arrays["train"][0])
    prep = Preprocessing(channels, image_size or (height, width), pad, mean, std, tuple(x_train.shape[1:3]))
    augment = parse_augment(augment, channels)
    options = dict(path=None if path is None else str(path), image_size=image_size, channels=channels, pad=pad,
                   standardize=standardize, validation_split=validation_split, augment=list(augment),
                   train_subset_per_class=train_subset_per_class, seed=seed)
    return assemble(name, arrays, raw.class_names, prep, batch_size, augment, seed, raw.source, options)


# What `dataset_options` may hold: `load_dataset`'s options less those a TrainConfig sets itself.
LOAD_OPTIONS = tuple(p for p in inspect.signature(load_dataset).parameters if p not in ("name", "data_dir", "batch_size"))

__all__ = ["DATA_ENV", "DATASETS", "LOAD_OPTIONS", "DatasetBundle", "Preprocessing", "as_bundle", "load_dataset",
           "CIFAR10_CLASSES", "DataError"]
