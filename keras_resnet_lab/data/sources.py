"""Where each dataset's raw uint8 arrays come from: local files first, then tensorflow-datasets.

Every reader returns a `RawData` of uint8 (N, H, W, C) images and int64 labels, so the tf.data
pipeline never needs to know which file format it came from.
"""

import codecs
import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import socket
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..files import atomic_path

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
from .archives import check_archive_type, default_cache_dir, extract_archive, is_archive
from .images import files_key, image_size_of, split_files, find_split_root, load_split

DATA_ENV = "KERAS_RESNET_LAB_DATA"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass
class RawData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    source: str

    def check(self):
        """Refuses data no model could learn from correctly, naming the file it came from.

        Images must be uint8 (N, H, W, 1 or 3) of one size in both splits; labels one per image,
        integer class indices below the number of classes; train must hold two or more classes.
        """
        where = self.source
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8:
                raise DataError(f"{where}: the {split} images must be uint8 (N, height, width[, 1 or 3]); found "
                                f"{x.dtype} of shape {x.shape[:-1] if x.ndim == 4 and x.shape[-1] == 1 else x.shape}.")
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
                raise DataError(f"{where}: the {split} split needs one integer label per image; found {len(x)} images "
                                f"and labels of shape {y.shape} ({y.dtype}).")
            if len(y) == 0:
                raise DataError(f"{where}: the {split} split is empty.")
            if y.min() < 0 or y.max() >= len(self.class_names):
                raise DataError(f"{where}: a {split} label is {int(y.min() if y.min() < 0 else y.max())}, outside the "
                                f"{len(self.class_names)} classes (0 to {len(self.class_names) - 1}).")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{where}: train images are {self.x_train.shape[1:]} but test images {self.x_test.shape[1:]}.")
        if len(np.unique(self.y_train)) < 2:
            raise DataError(f"{where}: the train split holds {len(np.unique(self.y_train))} class; a classifier needs two or more.")
        self.y_train, self.y_test = self.y_train.astype(np.int64), self.y_test.astype(np.int64)
        return self


def search_dirs(data_dir):
    """The folders searched for local copies: `data_dir`, then `$KERAS_RESNET_LAB_DATA`."""
    dirs = [Path(d).expanduser() for d in (data_dir, os.environ.get(DATA_ENV)) if d]
    return list(dict.fromkeys(dirs))


def _candidates(dirs, dataset, names):
    for folder in dirs:
        for base in (folder, folder / dataset):
            for name in names:
                yield base / name


# ---------------------------------------------------------------- MNIST-style (npz and IDX)

def _read_idx(path):
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise DataError(f"Cannot read IDX file {path}: {error}.") from None
    if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: its header promises {dims} but it holds {body.size} bytes.")
    return body.reshape(dims)


def _read_mnist_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as error:
        raise DataError(f"{path} lacks the array {error}; expected x_train, y_train, x_test, y_test.") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"Cannot read {path}: {error}.") from None
    return arrays


def _find_mnist_style(dataset, dirs):
    if dataset == "mnist":
        for path in _candidates(dirs, dataset, ["mnist.npz"]):
            if path.is_file():
                return _read_mnist_npz(path), str(path)
    for folder in [base for d in dirs for base in (d, d / dataset)]:
        files = {}
        for key, stem in IDX_FILES.items():
            found = [folder / f"{stem}{ext}" for ext in (".gz", "") if (folder / f"{stem}{ext}").is_file()]
            if found:
                files[key] = found[0]
        if len(files) == 4:
            return {key: _read_idx(path) for key, path in files.items()}, str(folder)
    return None, None


def load_mnist_style(dataset, data_dir, class_names, download):
    dirs = search_dirs(data_dir)
    arrays, source = _find_mnist_style(dataset, dirs)
    if arrays is None:
        looked_for = (["mnist.npz"] if dataset == "mnist" else []) + [f"{s}.gz" for s in IDX_FILES.values()]
        return load_tfds(dataset, dirs, looked_for, download)
    x_train, x_test = (arrays[k][..., None] for k in ("x_train", "x_test"))  # RawData.check refuses other shapes
    return RawData(x_train, arrays["y_train"], x_test, arrays["y_test"], class_names, source)


# ---------------------------------------------------------------- CIFAR (pickles or image folders)

class _CifarUnpickler(pickle.Unpickler):
    """Allows only what CIFAR's pickles hold: numpy arrays, lists, dicts, numbers and strings."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")
        return self.ALLOWED[(module, name)]


def read_cifar_pickle(data, origin):
    """Unpickles one CIFAR batch with the restricted unpickler; names `origin` on failure."""
    try:
        batch = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # a crafted pickle can raise anything; nothing in it has run
        raise DataError(f"Refusing {origin}: not a plain CIFAR pickle ({error}).") from None
    if not isinstance(batch, dict):
        raise DataError(f"Refusing {origin}: a CIFAR pickle holds a dict, found {type(batch).__name__}.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_arrays(batches, label_key, origin):
    try:
        data = [np.asarray(b["data"]) for b in batches]
        labels = [np.asarray(b[label_key]) for b in batches]
    except KeyError as error:
        raise DataError(f"{origin}: a batch lacks the key {error}; expected the official CIFAR batches.") from None
    if any(d.ndim != 2 or d.shape[1] != 3 * 32 * 32 or d.dtype != np.uint8 for d in data):
        shapes = ", ".join(f"{d.dtype} {d.shape}" for d in data)
        raise DataError(f"{origin}: CIFAR batch data must be uint8 rows of 3072 pixels; found {shapes}.")
    x = np.concatenate(data)
    y = np.concatenate(labels)
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
        "meta": "batches.meta", "names": "label_names", "labels": "labels",
    },
    "cifar100": {
        "folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
        "train": ["train"], "test": ["test"], "meta": "meta", "names": "fine_label_names",
        "labels": "fine_labels",
    },
}


def _read_cifar_members(layout, read_member, origin):
    train = [read_cifar_pickle(*read_member(n)) for n in layout["train"]]
    test = [read_cifar_pickle(*read_member(n)) for n in layout["test"]]
    meta = read_cifar_pickle(*read_member(layout["meta"]))
    if layout["names"] not in meta:
        raise DataError(f"{origin}: {layout['meta']} lacks {layout['names']!r}; expected the official CIFAR files.")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout["names"]]]
    (x_train, y_train), (x_test, y_test) = (_cifar_arrays(s, layout["labels"], origin) for s in (train, test))
    return x_train, y_train, x_test, y_test, names


def _read_cifar_tar(path, layout):
    try:
        with tarfile.open(path) as tf:
            def read_member(name):
                member = f"{layout['folder']}/{name}"
                try:
                    return tf.extractfile(member).read(), f"{path}:{member}"
                except KeyError:
                    raise DataError(f"{path} has no member {member}; is it the official archive?") from None
            return _read_cifar_members(layout, read_member, path)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"Cannot read {path}: {error}. Is the file complete?") from None


def _read_cifar_folder(folder, layout):
    def read_member(name):
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder} has no file {name}; expected the official CIFAR batches.")
        return path.read_bytes(), str(path)
    return _read_cifar_members(layout, read_member, folder)


def load_cifar(dataset, data_dir, download, image_folder_options):
    layout = CIFAR_LAYOUT[dataset]
    dirs = search_dirs(data_dir)
    jpeg_names = [f"{dataset}-jpeg.tar.gz", f"{dataset}-jpeg.zip", f"{dataset}.tar.gz", dataset]
    names = [layout["archive"], layout["folder"], *jpeg_names]
    for path in _candidates(dirs, dataset, names):
        if path.name == layout["archive"] and path.is_file():
            return RawData(*_read_cifar_tar(path, layout), str(path))
        if path.name == layout["folder"] and path.is_dir():
            return RawData(*_read_cifar_folder(path, layout), str(path))
        if path.name in jpeg_names and (path.is_file() or (path.is_dir() and path.name == dataset)):
            return load_image_folder(path, **image_folder_options)
    return load_tfds(dataset, dirs, names, download)


# ---------------------------------------------------------------- image folders and archives

def load_image_folder(path, *, image_size=None, cache_dir=None, on_bad_file="warn", mode="RGB", in_memory="auto",
                      stream_cache=False):
    """Reads `<split>/<class>/<image>` files from a folder or a .tar/.tar.gz/.zip archive of one.

    `in_memory`: True decodes every image up front (cached by content); False streams them from
    their files as training reads them (`streaming.FileImages`); "auto" decodes up front when the
    decoded pixels fit the memory budget (`streaming.memory_budget`), else streams.
    `stream_cache`: a streamed folder is decoded once into a file in `cache_dir` and read from it.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"Image folder {path} does not exist; pass path= a folder or archive of <split>/<class>/<image> files.")
    check_archive_type(path)
    cache_dir = Path(cache_dir or default_cache_dir())
    folder = extract_archive(path, cache_dir) if is_archive(path) else path
    root = find_split_root(folder)
    if in_memory is not True:
        streamed = _streamed(root, image_size, mode, in_memory, str(path), cache_dir if stream_cache else None)
        if streamed is not None:
            return streamed
    options = dict(image_size=image_size, mode=mode, cache_dir=cache_dir, on_bad_file=on_bad_file)
    x_train, y_train, class_names = load_split(root, "train", class_names=None, **options)
    x_test, y_test, _ = load_split(root, "test", class_names=class_names, **options)
    return RawData(x_train, y_train, x_test, y_test, class_names, str(path))


def _streamed(root, image_size, mode, in_memory, source, disk_cache=None):
    """The folder as `FileImages` splits, unless "auto" finds its decoded pixels fit in memory;
    decoded once into `disk_cache` if given."""
    from .streaming import FileImages, memory_budget

    _, train_paths, y_train, class_names = split_files(root, "train")
    _, test_paths, y_test, _ = split_files(root, "test", class_names)
    size = tuple(image_size) if image_size else image_size_of(train_paths[0])
    channels = 1 if mode == "L" else 3
    if in_memory == "auto" and (len(train_paths) + len(test_paths)) * size[0] * size[1] * channels <= memory_budget():
        return None
    train, test = FileImages(train_paths, size, channels), FileImages(test_paths, size, channels)
    if disk_cache is not None:
        train, test = train.with_disk_cache(disk_cache), test.with_disk_cache(disk_cache)
    return RawData(train, y_train, test, y_test, class_names, source)


# ---------------------------------------------------------------- scikit-learn digits

def load_digits(seed=0, test_fraction=0.2):
    """scikit-learn's 1,797 8x8 digits (0..16) as uint8 0..255, split 80/20, stratified, fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=test_fraction, random_state=seed,
        stratify=digits.target,
    )
    return RawData(x_train, y_train, x_test, y_test, [str(i) for i in range(10)], "sklearn.datasets.load_digits")


# ---------------------------------------------------------------- tensorflow-datasets

TFDS_HOST = ("storage.googleapis.com", 443)


def _online(timeout=3.0):
    try:
        socket.create_connection(TFDS_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_error(dataset, dirs, looked_for, reason):
    searched = ", ".join(str(d) for d in dirs) or "(none: no data_dir given and $KERAS_RESNET_LAB_DATA unset)"
    return DataError(
        f"No local copy of {dataset!r} and {reason}. Looked for {', '.join(looked_for)} in: "
        f"{searched} (and their {dataset}/ subfolders). Fix: download those files into a folder "
        f"and pass data_dir= (CLI: --data-dir) or set ${DATA_ENV}."
    )


def load_tfds(dataset, dirs, looked_for, download):
    """Loads `dataset` through tensorflow-datasets, failing fast and clearly when offline."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset)
    if not builder.is_prepared():
        if not download:
            raise _offline_error(dataset, dirs, looked_for, "downloading is turned off (download=False)")
        if not _online():
            raise _offline_error(dataset, dirs, looked_for, "tensorflow-datasets cannot download it (offline)")
        builder.download_and_prepare()
    train, test = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1, as_supervised=True))
    names = builder.info.features["label"].names
    return RawData(train[0], train[1].astype(np.int64), test[0], test[1].astype(np.int64), names, f"tfds:{dataset}")


def load_tfds_named(name, data_dir, *, image_size=None, in_memory="auto", stream_cache=False, cache_dir=None,
                    download=True):
    """`tfds:NAME`: any image classification dataset of tensorflow-datasets (features "image" and
    "label", splits "train" and "test"), from a prepared copy under `data_dir` (or TFDS's own
    folder), else downloaded and prepared there.

    Stored as ArrayRecord, its records are read by number: streamed like an image folder when
    `in_memory` says so (then `stream_cache` works as for folders), else decoded into arrays.
    Stored as TFRecord (TFDS's default), only the sequential reader exists: it is decoded into
    arrays, and streaming it is refused with the command that converts it.
    """
    import tensorflow_datasets as tfds

    from .streaming import RecordImages, memory_budget

    dirs = search_dirs(data_dir)
    prepared = [d for d in dirs if (d / name).is_dir()]
    try:
        builder = tfds.builder(name, data_dir=str(prepared[0]) if prepared else None)
    except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(f"tensorflow-datasets has no dataset {name!r} (and no prepared copy under "
                          f"{', '.join(str(d) for d in dirs) or 'a data_dir'}); see "
                          "https://www.tensorflow.org/datasets/catalog for the names.") from None
    if not builder.is_prepared():
        if not download or not _online():
            raise _offline_error(f"tfds:{name}", dirs, [f"{name}/<version>/ (a prepared TFDS copy)"],
                                 "downloading is turned off (download=False)" if not download
                                 else "tensorflow-datasets cannot download it (offline)")
        builder.download_and_prepare()
    features, splits = builder.info.features, builder.info.splits
    if not {"image", "label"} <= set(features.keys()) or not {"train", "test"} <= set(splits.keys()):
        raise DataError(f"tfds:{name} needs features 'image' and 'label' and splits 'train' and 'test'; it has "
                        f"features {sorted(features.keys())} and splits {sorted(splits.keys())}.")
    height, width, channels = features["image"].shape
    if image_size is None and None in (height, width):
        raise ConfigError(f"The images of tfds:{name} differ in size: pass image_size=(height, width).")
    size = tuple(image_size or (height, width))
    counts = {split: splits[split].num_examples for split in ("train", "test")}
    stream = in_memory is False or (in_memory == "auto" and sum(counts.values()) * size[0] * size[1] * channels
                                    > memory_budget())
    random_access = builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    if stream and not random_access:
        raise ConfigError(f"tfds:{name} is stored as {builder.info.file_format.value}, which is read only in order; "
                          f"streaming reads images by number. Convert it once (tfds convert_format --dataset_dir "
                          f"{builder.data_dir} --out_file_format array_record) or use in_memory=True.")
    identity = f"{name}:{builder.info.version}:" + files_key(sorted(Path(builder.data_dir).iterdir()), str(size))
    arrays = []
    for split in ("train", "test"):
        if random_access:
            images = RecordImages(functools.partial(builder.as_data_source, split), f"{identity}:{split}",
                                  np.arange(counts[split]), size, channels)
            labels = _record_labels(builder, split, images, cache_dir)
            if stream and stream_cache:
                images = images.with_disk_cache(cache_dir)
            arrays += [images if stream else np.asarray(images), labels]
        else:
            arrays += _sequential_arrays(builder, split, size)
    return RawData(*arrays, list(features["label"].names), f"tfds:{name} ({builder.data_dir})")


def _record_labels(builder, split, images, cache_dir):
    """Every label of a record split, read without decoding images; kept in `cache_dir` by content."""
    import tensorflow_datasets as tfds

    path = Path(cache_dir) / "streamed" / f"{hashlib.sha256(images.content_key().encode()).hexdigest()[:32]}-labels.npy"
    if path.is_file():
        return np.load(path)
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    chunks = [range(start, min(start + 4096, len(source))) for start in range(0, len(source), 4096)]
    labels = np.asarray([record["label"] for chunk in chunks for record in source.__getitems__(list(chunk))], np.int64)
    with atomic_path(path) as tmp:
        np.save(tmp, labels)
    return labels


def _sequential_arrays(builder, split, size):
    """(images, labels) of a TFRecord split, decoded in order and resized to `size`."""
    import tensorflow as tf

    dataset = builder.as_dataset(split=split, as_supervised=True).map(
        lambda image, label: (tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, size, antialias=True)), 0, 255),
                                      tf.uint8), label), num_parallel_calls=tf.data.AUTOTUNE)
    images, labels = [], []
    for x, y in dataset.batch(1024).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)
