"""Image folders larger than memory: streamed from their files, same batches, bounded memory."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import keras_resnet_lab as lab
from keras_resnet_lab import ConfigError
from keras_resnet_lab.data.streaming import FileImages, memory_budget


def make_folder(root, per_class, size, suffix="png"):
    """Smooth two-class images (they compress well), `per_class` train and a tenth as many test."""
    yy, xx = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", max(per_class // 10, 2))):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = 127 + 120 * np.sin(xx / (5 + 5 * label) + yy / 13 + rng.random() * 6)
                Image.fromarray(pixels.astype("uint8")).convert("RGB").save(folder / f"{index}.{suffix}")
    return root


def test_streamed_batches_equal_the_in_memory_ones(tmp_path):
    folder = make_folder(tmp_path / "images", 24, 16)
    options = dict(path=folder, batch_size=8, validation_split=0.25, augment=["crop", "flip"], seed=3,
                   cache_dir=tmp_path / "cache")
    decoded, streamed = (lab.load_dataset("image_folder", in_memory=mode, **options) for mode in (True, False))
    assert isinstance(streamed.arrays["train"][0], FileImages) and isinstance(decoded.arrays["train"][0], np.ndarray)
    assert streamed.num_examples == decoded.num_examples == {"train": 36, "validation": 12, "test": 4}
    for split in ("train", "validation", "test"):
        for epoch in range(2):  # each epoch its own order and augmentations, the same in both
            for (x1, y1), (x2, y2) in zip(getattr(decoded, split), getattr(streamed, split)):
                np.testing.assert_array_equal(y1.numpy(), y2.numpy())
                np.testing.assert_allclose(x1.numpy(), x2.numpy(), atol=1e-6)


def test_a_disk_cache_decodes_once_and_gives_the_same_batches(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "images", 24, 16)
    options = dict(path=folder, batch_size=8, validation_split=0.25, augment=["crop", "flip"], seed=3,
                   cache_dir=tmp_path / "cache", in_memory=False)
    streamed = lab.load_dataset("image_folder", **options)
    cached = lab.load_dataset("image_folder", stream_cache=True, **options)
    files = sorted((tmp_path / "cache" / "streamed").glob("*.u8"))
    assert sorted(f.name.split("-")[1] for f in files) == ["48x16x16x3.u8", "4x16x16x3.u8"]  # train, test
    assert cached.arrays["train"][0].cache is not None
    for split in ("train", "validation", "test"):
        for (x1, y1), (x2, y2) in zip(getattr(streamed, split), getattr(cached, split)):
            np.testing.assert_array_equal(y1.numpy(), y2.numpy())
            np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    stamps = [f.stat().st_mtime_ns for f in files]
    monkeypatch.setattr(FileImages, "_write_cache", lambda *a: pytest.fail("decoded again"))
    again = lab.load_dataset("image_folder", stream_cache=True, **options)
    assert [f.stat().st_mtime_ns for f in files] == stamps and len(list(again.train)) == 5
    os.utime(next((folder / "train" / "class0").iterdir()), ns=(1, 1))  # a file changed: a new cache
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        lab.load_dataset("image_folder", stream_cache=True, **options)
    with pytest.raises(ConfigError, match="stream_cache must be True or False; received 'yes'"):
        lab.load_dataset("image_folder", stream_cache="yes", **options)


def test_each_process_reads_only_its_part_of_every_batch(tmp_path, monkeypatch):
    """Process 1 of 2 (4 devices in all): its training and validation batches are the second half of
    the in-memory ones, cut before any file is read; the other half's files are never opened."""
    import tensorflow as tf

    from keras_resnet_lab.training import devices

    folder = make_folder(tmp_path / "images", 24, 16)
    options = dict(path=folder, batch_size=8, validation_split=0.25, augment=["crop", "flip"], seed=3,
                   cache_dir=tmp_path / "cache")
    decoded, streamed = (lab.load_dataset("image_folder", in_memory=mode, **options) for mode in (True, False))
    read = []
    decode = FileImages.decode

    def counting_decode(self, path):
        path = tf.numpy_function(lambda p: (read.append(p.decode()), p)[1], [path], tf.string, stateful=True)
        return decode(self, path)

    monkeypatch.setattr(FileImages, "decode", counting_decode)
    monkeypatch.setattr(devices, "shards", lambda: 4)
    monkeypatch.setattr(devices, "process_count", lambda: 2)
    monkeypatch.setattr(devices, "process_index", lambda: 1)
    mine = streamed.with_batches(devices.even_batches)
    whole = decoded.with_batches(lambda dataset, training: dataset)
    train = list(zip(whole.train, mine.train))
    assert [len(y_part) for _, (_, y_part) in train] == [4, 4, 4, 4, 2]  # 36 images: 4 x 8, then 4 (4 devices share it)
    for (x, y), (x_part, y_part) in train:
        half = len(y) // 2
        np.testing.assert_array_equal(y[half:].numpy(), y_part.numpy())
        np.testing.assert_allclose(x[half:].numpy(), x_part.numpy(), atol=1e-6)
    assert len(read) == 18 == len(set(read))  # this process's 18 of the 36 images, each read once
    read.clear()
    validation = list(mine.validation)  # 12 images: 8, then 4 (a multiple of 4 devices: no pads needed)
    assert [len(labels) for _, labels, _ in validation] == [4, 2] and len(read) == 6
    assert all(w.numpy().all() for _, _, w in validation)


def test_auto_streams_only_what_exceeds_the_memory_budget(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "images", 10, 16)  # 22 decoded 16x16x3 images: 16,896 bytes
    monkeypatch.setenv("KERAS_RESNET_LAB_MEMORY_BUDGET", "16k")
    assert memory_budget() == 16384
    streamed = lab.load_dataset("image_folder", path=folder, cache_dir=tmp_path / "cache")
    monkeypatch.setenv("KERAS_RESNET_LAB_MEMORY_BUDGET", "1M")
    decoded = lab.load_dataset("image_folder", path=folder, cache_dir=tmp_path / "cache")
    assert isinstance(streamed.arrays["train"][0], FileImages)
    assert isinstance(decoded.arrays["train"][0], np.ndarray)


def test_bad_settings_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="in_memory must be 'auto', True or False"):
        lab.load_dataset("digits", in_memory="no")
    with pytest.raises(ConfigError, match="in_memory=False streams image folders.*one array file"):
        lab.load_dataset("digits", in_memory=False)
    monkeypatch.setenv("KERAS_RESNET_LAB_MEMORY_BUDGET", "lots")
    with pytest.raises(ConfigError, match="KERAS_RESNET_LAB_MEMORY_BUDGET must be a number of bytes"):
        memory_budget()


def test_training_reports_and_export_run_on_streamed_data(tmp_path):
    folder = make_folder(tmp_path / "images", 16, 16)
    result = lab.train("lenet5", "image_folder", dataset_options={"path": str(folder), "in_memory": False},
                       epochs=1, batch_size=8, validation_split=0.25, run_dir=str(tmp_path / "run"), verbose="quiet")
    assert (tmp_path / "run" / "plots" / "mistakes.png").is_file()
    exported = lab.load_exported(lab.export(result.run_dir, tmp_path / "export"))
    image = np.asarray(Image.open(next((folder / "test" / "class0").iterdir())))
    probabilities, _ = exported.predict(image[None])
    assert probabilities.shape == (1, 2)


RSS = textwrap.dedent("""
    import json, os, sys
    os.environ["KERAS_RESNET_LAB_MEMORY_BUDGET"] = "16M"
    import keras_resnet_lab as lab

    def status_mb(field):
        return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith(field))

    data = lab.load_dataset("image_folder", path=sys.argv[1], batch_size=64, augment=["flip"], cache_dir=sys.argv[2])
    batches = iter(data.train)
    next(batches)  # TensorFlow started, the pipeline built
    base = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) counts from here
    for _ in batches:
        pass
    for _ in data.train:  # a second epoch
        pass
    peak = status_mb("VmHWM")
    x = data.arrays["train"][0]
    print(json.dumps({"streamed": type(x).__name__, "decoded_mb": len(x) * 64 * 64 * 3 / 2**20, "base_mb": base, "peak_mb": peak,
                      "growth_mb": peak - base}))
""")


def test_peak_memory_does_not_grow_with_a_streamed_folder(tmp_path):
    folder = make_folder(tmp_path / "images", 3000, 64, suffix="jpg")  # 6,000 train images: 70 MB decoded
    done = subprocess.run([sys.executable, "-c", RSS, str(folder), str(tmp_path / "cache")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["streamed"] == "FileImages" and result["decoded_mb"] > 4 * 16  # several times the budget
    # What grows is the batches in flight (a few decoded 64-image batches: 6-26 MB measured), not the folder
    assert result["growth_mb"] < result["decoded_mb"] / 2


def tiny_tfds(data_dir, file_format="array_record"):
    """A two-class tensorflow-datasets dataset of images of several sizes, prepared offline."""
    import tensorflow_datasets as tfds

    class TinyShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # read back from its files
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                                   "label": tfds.features.ClassLabel(names=["round", "square"])})
            return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40, 0), "test": self._generate_examples(8, 1)}

        def _generate_examples(self, count, seed):
            rng = np.random.default_rng(seed)
            for index in range(count):
                size = 10 + index % 5
                yield index, {"image": rng.integers(0, 255, (size, size + 2, 3), dtype=np.uint8), "label": index % 2}

    TinyShapes(data_dir=str(data_dir), file_format=file_format).download_and_prepare()
    return data_dir


def test_a_tfds_dataset_streams_its_records_as_a_folder_does(tmp_path):
    from keras_resnet_lab.data.streaming import RecordImages

    data_dir = tiny_tfds(tmp_path / "tfds")
    options = dict(data_dir=data_dir, image_size=(12, 12), batch_size=8, validation_split=0.25, augment=["crop", "flip"],
                   seed=3, cache_dir=tmp_path / "cache")
    decoded, streamed = (lab.load_dataset("tfds:tiny_shapes", in_memory=mode, **options) for mode in (True, False))
    cached = lab.load_dataset("tfds:tiny_shapes", in_memory=False, stream_cache=True, **options)
    assert isinstance(streamed.arrays["train"][0], RecordImages) and isinstance(decoded.arrays["train"][0], np.ndarray)
    assert streamed.num_examples == {"train": 30, "validation": 10, "test": 8}
    assert streamed.class_names == ["round", "square"] and streamed.input_shape == (12, 12, 3)
    for split in ("train", "validation", "test"):
        for (x1, y1), (x2, y2), (x3, y3) in zip(getattr(decoded, split), getattr(streamed, split), getattr(cached, split)):
            np.testing.assert_array_equal(y1.numpy(), y2.numpy())
            np.testing.assert_array_equal(y1.numpy(), y3.numpy())
            np.testing.assert_allclose(x1.numpy(), x2.numpy(), atol=1e-6)
            np.testing.assert_allclose(x2.numpy(), x3.numpy(), atol=1e-6)
    assert streamed.identity() == lab.load_dataset("tfds:tiny_shapes", in_memory=False, **options).identity()
    with pytest.raises(ConfigError, match="differ in size: pass image_size"):
        lab.load_dataset("tfds:tiny_shapes", data_dir=data_dir, in_memory=False)
    with pytest.raises(ConfigError, match="no dataset 'tiny_shapez'"):
        lab.load_dataset("tfds:tiny_shapez", data_dir=data_dir, download=False)


def test_a_tfrecord_tfds_dataset_loads_in_memory_and_names_the_conversion_for_streaming(tmp_path):
    data_dir = tiny_tfds(tmp_path / "tfds", file_format="tfrecord")
    bundle = lab.load_dataset("tfds:tiny_shapes", data_dir=data_dir, image_size=(12, 12), in_memory="auto")
    assert bundle.arrays["train"][0].shape == (40, 12, 12, 3) and sorted(bundle.arrays["test"][1]) == [0] * 4 + [1] * 4
    with pytest.raises(ConfigError, match="stored as tfrecord.*tfds convert_format --dataset_dir .*tiny_shapes.*"
                                          "--out_file_format array_record"):
        lab.load_dataset("tfds:tiny_shapes", data_dir=data_dir, image_size=(12, 12), in_memory=False)
