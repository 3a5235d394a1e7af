"""A Keras user's own data as a `DatasetBundle`: NumPy arrays or `tf.data` datasets.

Arrays go through the same in-memory pipeline as `load_dataset` (stratified validation split,
shuffling by seed, preprocessing recorded for export); `tf.data` datasets are used as given.
"""

import numpy as np
import tensorflow as tf

from ..errors import ConfigError, DataError
from .bundle import DatasetBundle, assemble, carve_validation
from .pipeline import Preprocessing, standardization


def as_bundle(data, *, validation_data=None, test_data=None, num_classes=None, class_names=None, batch_size=128,
              validation_split=0.0, seed=0, name=None, standardize=False):
    """`data` as a `DatasetBundle`.

    Args:
        data: a `DatasetBundle` (returned as is), a pair `(x, y)` of arrays (uint8 images, or
            floats scaled to [0, 1]; integer labels), or a `tf.data.Dataset` of (image, label),
            batched or not.
        validation_data, test_data: the same kind as `data`. Without `validation_data`, arrays
            are split by `validation_split`; a `tf.data` dataset trains without validation.
        num_classes, class_names: inferred from the labels where not given.
        standardize: for arrays, as `load_dataset`'s (False, True, "imagenet" or (mean, std));
            `tf.data` datasets are used as given, so normalize them yourself.
    """
    if isinstance(data, DatasetBundle):
        return data
    if isinstance(data, tf.data.Dataset):
        return _from_datasets(data, validation_data, test_data, num_classes, class_names, batch_size, name)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _from_arrays(data, validation_data, test_data, num_classes, class_names, batch_size,
                            validation_split, seed, name, standardize)
    raise ConfigError(f"dataset must be a dataset name, a DatasetBundle, a tf.data.Dataset of (image, label) or a "
                      f"pair (x, y) of arrays; received {type(data).__name__}.")


# ---------------------------------------------------------------------------- arrays

def _checked_arrays(pair, what):
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ConfigError(f"{what} must be a pair (x, y) of arrays like the training data; received {type(pair).__name__}.")
    x, y = np.asarray(pair[0]), np.asarray(pair[1])
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{what}: images must be (N, height, width) or (N, height, width, 1 or 3); received shape {x.shape}.")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be a 1-D array of integer class indices; received shape {y.shape}, "
                        f"dtype {y.dtype}.")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels; give one label per image.")
    if len(y) == 0:
        raise DataError(f"{what} is empty.")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating) or x.min() < 0 or x.max() > 1:
            raise DataError(f"{what}: images must be uint8 (0-255) or floats scaled to [0, 1] (x / 255); received "
                            f"{x.dtype} from {x.min()} to {x.max()}.")
        x = x.astype(np.float32)
    return x, y.astype(np.int32)


def _from_arrays(data, validation_data, test_data, num_classes, class_names, batch_size, validation_split, seed, name,
                 standardize):
    arrays = {"train": _checked_arrays(data, "the training data")}
    if validation_data is not None:
        arrays["validation"] = _checked_arrays(validation_data, "validation_data")
    elif validation_split:
        arrays["train"], arrays["validation"] = carve_validation(*arrays["train"], validation_split, seed)
    if test_data is not None:
        arrays["test"] = _checked_arrays(test_data, "test_data")
    shapes = {split: x.shape[1:] for split, (x, _) in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"Every split needs images of one shape; received {shapes}.")
    class_names = _class_names(num_classes, class_names, [y for _, y in arrays.values()])
    height, width, channels = arrays["train"][0].shape[1:]
    mean, std = standardization(standardize, channels, arrays["train"][0])
    prep = Preprocessing(channels, (height, width), mean=mean, std=std, source_size=(height, width))
    options = {"validation_split": validation_split if validation_data is None else None, "seed": seed}
    if standardize is not False:
        options["standardize"] = standardize
    return assemble(name or "arrays", arrays, class_names, prep, batch_size, (), seed, "arrays", options)


def _class_names(num_classes, class_names, label_arrays):
    """Class names from the arguments or the labels; labels outside them are refused."""
    highest = max(int(y.max()) for y in label_arrays)
    if min(int(y.min()) for y in label_arrays) < 0:
        raise DataError("Labels must be class indices >= 0; received a negative label.")
    if class_names is not None:
        class_names = [str(name) for name in class_names]
    count = num_classes or (len(class_names) if class_names else highest + 1)
    if class_names is not None and len(class_names) != count:
        raise ConfigError(f"{len(class_names)} class_names for num_classes={count}; give one name per class.")
    if highest >= count:
        raise DataError(f"A label is {highest}, but there are {count} classes (labels 0 to {count - 1}); "
                        "fix the labels or num_classes.")
    return class_names or [str(i) for i in range(count)]


# ---------------------------------------------------------------------------- tf.data

def _batched(dataset, batch_size, what):
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise DataError(f"{what} must yield (image, label) pairs; its elements are {spec}.")
    rank = spec[0].shape.rank
    if rank == 3:
        return dataset.batch(batch_size)
    if rank != 4:
        raise DataError(f"{what} must yield images of shape (height, width, channels), batched or not; "
                        f"received {spec[0].shape}.")
    return dataset


def _from_datasets(train, validation, test, num_classes, class_names, batch_size, name):
    train = _batched(train, batch_size, "the training dataset")
    validation = None if validation is None else _batched(validation, batch_size, "validation_data")
    test = None if test is None else _batched(test, batch_size, "test_data")
    shape = tuple(train.element_spec[0].shape[1:])
    if None in shape:
        raise DataError(f"The training dataset's images need a fixed shape (height, width, channels); received {shape}.")
    first = next(iter(train.take(1)), None)
    if first is None:
        raise DataError("The training dataset is empty.")
    batch_size = int(first[0].shape[0])  # the user's own batching decides the steps per epoch
    if num_classes is None and class_names is None:
        num_classes = int(max(int(np.max(y)) for _, y in train.as_numpy_iterator())) + 1
    class_names = [str(c) for c in class_names] if class_names else [str(i) for i in range(num_classes)]
    prep = Preprocessing(shape[-1], shape[:2], source_size=shape[:2])
    counts = {split: _batches(data, split) * batch_size for split, data in
              (("train", train), ("validation", validation), ("test", test)) if data is not None}
    return DatasetBundle(
        name=name or "tf.data", train=train, validation=validation, test=test, num_classes=len(class_names),
        class_names=class_names, input_shape=shape, num_examples=counts, preprocessing=prep, arrays=None,
        batch_size=batch_size, source="tf.data",
    )


def _batches(dataset, split):
    """Batches per pass (counted by reading it once when TensorFlow cannot tell)."""
    count = int(dataset.cardinality())
    if count == tf.data.INFINITE_CARDINALITY:
        raise DataError(f"The {split} dataset repeats forever; pass it without .repeat(): train runs epochs over it.")
    return count if count >= 0 else sum(1 for _ in dataset)
