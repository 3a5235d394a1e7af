"""`DatasetBundle`: the batched splits a model trains on, what they hold, and their identity."""

import dataclasses
import functools
import hashlib
from typing import Optional

import numpy as np
import tensorflow as tf

from ..errors import ConfigError, DataError
from .pipeline import EpochCounter, Preprocessing, make_augmenter, make_dataset
from .streaming import StreamedImages, make_streaming_dataset


@dataclasses.dataclass
class DatasetBundle:
    """What `load_dataset` returns (and what `train` makes of arrays or `tf.data` datasets).

    Attributes:
        train, validation, test: batched `tf.data.Dataset`s of (float32 image, int32 label);
            `validation` is None unless `validation_split` > 0 (or validation data was given),
            `test` is None when no test data was given.
        num_classes, class_names, input_shape: what a model needs to know.
        num_examples: {"train": n, "validation": n, "test": n} (None where unknown).
        preprocessing: the `Preprocessing` applied (channels, size, padding, mean and std).
        arrays: the arrays behind each split, {"train": (x, y), ...}, for plots and checks;
            None for data given as `tf.data` datasets.
        options: the `load_dataset` options that made it (recorded in the run's identity).
    """

    name: str
    train: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    test: Optional[tf.data.Dataset]
    num_classes: int
    class_names: list
    input_shape: tuple
    num_examples: dict
    preprocessing: Preprocessing
    arrays: Optional[dict]
    batch_size: int
    augment: tuple = ()
    seed: int = 0
    source: str = ""
    options: dict = dataclasses.field(default_factory=dict)
    train_epoch: Optional[EpochCounter] = None

    def start_training_at(self, epoch):
        """Makes the train split's next pass epoch `epoch` (0-based) of the seed's sequence of
        orders and augmentations (a resumed run's first epoch)."""
        if self.train_epoch is not None:
            self.train_epoch.release(epoch)

    def with_batch_size(self, batch_size):
        """The same data and transforms, batched by `batch_size` (for training phases)."""
        if batch_size == self.batch_size:
            return self
        if self.arrays is None:
            def rebatch(dataset):
                return None if dataset is None else dataset.unbatch().batch(batch_size).prefetch(tf.data.AUTOTUNE)

            return dataclasses.replace(self, train=rebatch(self.train), validation=rebatch(self.validation),
                                       test=rebatch(self.test), batch_size=batch_size)
        return assemble(self.name, self.arrays, self.class_names, self.preprocessing, batch_size, self.augment,
                        self.seed, self.source, self.options)

    def with_batches(self, transform):
        """The same data with `transform(dataset, training=...)` applied to the train and validation
        batches: to the images of in-memory splits, to the file indices of streamed ones (before any
        file is read). The test split is left as it is."""
        if self.arrays is None:
            return dataclasses.replace(self, train=transform(self.train, training=True),
                                       validation=transform(self.validation, training=False))
        return assemble(self.name, self.arrays, self.class_names, self.preprocessing, self.batch_size, self.augment,
                        self.seed, self.source, self.options, transform=transform)

    def identity(self):
        """What the data is: name, options, preprocessing, split sizes and a hash of its content."""
        return {"name": self.name, "options": self.options, "preprocessing": self.preprocessing.to_dict(),
                "augment": list(self.augment), "num_examples": self.num_examples, "content_sha256": self._content_hash()}

    def _content_hash(self):
        if self.arrays is None:  # a user's tf.data pipeline: its structure and size, not its content
            digest = hashlib.sha256(str(self.train.element_spec).encode())
            digest.update(str(int(self.train.cardinality())).encode())
            return "tf.data:" + digest.hexdigest()
        digest = hashlib.sha256()
        for split in sorted(self.arrays):
            for array in self.arrays[split]:
                if isinstance(array, StreamedImages):  # streamed: keyed on its files or records, not decoded
                    digest.update(f"{split}{array.content_key()}".encode())
                    continue
                array = np.ascontiguousarray(array)
                digest.update(f"{split}{array.dtype}{array.shape}".encode())
                digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()


def carve_validation(x, y, fraction, seed):
    """A stratified (train, validation) split of the arrays, by `seed`."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ConfigError(f"validation_split must be in [0, 1); received {fraction!r}.")
    counts = np.bincount(y)
    present = counts[counts > 0]
    stratify = y if present.min() >= 2 else None
    held_out = int(np.ceil(fraction * len(y)))
    if stratify is not None and min(held_out, len(y) - held_out) < len(present):
        raise DataError(f"validation_split={fraction} of {len(y)} training images cannot hold each of the "
                        f"{len(present)} classes on both sides; use more images or validation_split=0.")
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)
    return (x_train, y_train), (x_val, y_val)


def assemble(name, arrays, class_names, prep, batch_size, augment, seed, source, options=None, transform=None):
    """A `DatasetBundle` of batched pipelines over `arrays` {split: (x, y)} (x a uint8 array or
    `StreamedImages`); `transform` as `DatasetBundle.with_batches` takes it."""
    augmenter = make_augmenter(augment)
    train_epoch = EpochCounter()

    def make(split, x, y):
        shuffled = dict(shuffle_seed=seed, augmenter=augmenter, epoch=train_epoch) if split == "train" else {}
        if transform is None or split == "test":
            batches = None
        else:
            batches = functools.partial(transform, training=split == "train")
        if isinstance(x, StreamedImages):
            return make_streaming_dataset(x, y, prep, batch_size, batches=batches, **shuffled)
        dataset = make_dataset(x, y, prep, batch_size, **shuffled)
        return dataset if batches is None else batches(dataset)

    splits = {split: make(split, x, y) for split, (x, y) in arrays.items()}
    return DatasetBundle(
        name=name, train=splits["train"], validation=splits.get("validation"), test=splits.get("test"),
        num_classes=len(class_names), class_names=list(class_names),
        input_shape=(*prep.image_size, prep.channels),
        num_examples={split: len(y) for split, (_, y) in arrays.items()},
        preprocessing=prep, arrays=arrays, batch_size=batch_size, augment=augment, seed=seed,
        source=source, options=dict(options or {}), train_epoch=train_epoch,
    )
