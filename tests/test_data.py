import gzip
import io
import os
import pickle
import tarfile
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

import keras_resnet_lab as lab
from keras_resnet_lab.data.archives import extract_archive

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------ real data (skip without it)

def test_mnist_matches_the_published_facts(data_dir):
    data = lab.load_dataset("mnist", data_dir=data_dir)
    assert data.num_examples == {"train": 60000, "test": 10000}
    x_train, y_train = data.arrays["train"]
    assert list(y_train[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert list(data.arrays["test"][1][:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(data.arrays["test"][1]).tolist() == MNIST_TEST_COUNTS
    scaled = x_train / 255.0
    assert scaled.mean() == pytest.approx(0.1307, abs=1e-4) and scaled.std() == pytest.approx(0.3081, abs=1e-4)
    assert data.input_shape == (28, 28, 1) and data.num_classes == 10


def test_mnist_standardized_pipeline_has_zero_mean(data_dir):
    data = lab.load_dataset("mnist", data_dir=data_dir, standardize=True, batch_size=10000)
    assert data.preprocessing.mean[0] == pytest.approx(0.1307, abs=1e-4)
    images, _ = next(iter(data.train))
    assert abs(float(images.numpy().mean())) < 0.02 and float(images.numpy().std()) == pytest.approx(1, abs=0.02)


@pytest.mark.slow  # decodes all 60,000 JPEGs once (about 30 s)
def test_cifar10_reads_the_jpeg_archive(data_dir):
    data = lab.load_dataset("cifar10", data_dir=data_dir)
    assert data.num_examples == {"train": 50000, "test": 10000}
    assert data.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert data.input_shape == (32, 32, 3)
    assert np.bincount(data.arrays["test"][1]).tolist() == [1000] * 10
    mean = (data.arrays["train"][0][::10] / 255.0).mean(axis=(0, 1, 2))  # the archive is sorted by class
    np.testing.assert_allclose(mean, (0.4913, 0.4821, 0.4465), atol=0.01)


def test_cats_vs_dogs_archive_at_128(data_dir):
    data = lab.load_dataset("image_folder", path=data_dir / "cats_vs_dogs.tar.gz", image_size=(128, 128))
    assert data.num_examples == {"train": 2000, "test": 2000}
    assert data.class_names == ["cats", "dogs"] and data.input_shape == (128, 128, 3)


def test_digits_ship_with_scikit_learn():
    data = lab.load_dataset("digits")
    assert sum(data.num_examples.values()) == 1797
    assert data.input_shape == (8, 8, 1)
    assert data.arrays["train"][0].max() == 255


# ------------------------------------------------------------------ transforms

def test_pad_resize_channels_and_batches():
    data = lab.load_dataset("digits", pad=2, channels=3, image_size=(24, 24), batch_size=7)
    images, labels = next(iter(data.test))
    assert images.shape == (7, 24, 24, 3) and labels.shape == (7,)
    assert data.input_shape == (24, 24, 3)
    padded = lab.load_dataset("digits", pad=2).input_shape
    assert padded == (12, 12, 1)


def test_validation_split_is_stratified_deterministic_and_disjoint():
    a = lab.load_dataset("digits", validation_split=0.2, seed=3)
    b = lab.load_dataset("digits", validation_split=0.2, seed=3)
    assert a.num_examples["validation"] == pytest.approx(0.2 * 1437, abs=1)
    np.testing.assert_array_equal(a.arrays["validation"][1], b.arrays["validation"][1])
    assert a.num_examples["train"] + a.num_examples["validation"] == 1437


def test_shuffling_is_deterministic_by_seed():
    first = [y.numpy().tolist() for _, y in lab.load_dataset("digits", seed=5, batch_size=64).train.take(2)]
    again = [y.numpy().tolist() for _, y in lab.load_dataset("digits", seed=5, batch_size=64).train.take(2)]
    other = [y.numpy().tolist() for _, y in lab.load_dataset("digits", seed=6, batch_size=64).train.take(2)]
    assert first == again and first != other


def test_every_split_runs_without_the_autotuner_thread():
    # TF 2.21 blocks for seconds when an autotuned iterator is deleted (see PIPELINE_OPTIONS).
    data = lab.load_dataset("digits", validation_split=0.1, augment=["affine"], batch_size=64)
    for split in (data.train, data.validation, data.test):
        assert split.options().autotune.enabled is False
    # An AUTOTUNE map without the autotuner still yields every example once per epoch.
    epochs = [np.concatenate([labels.numpy() for _, labels in data.train]) for _ in range(2)]
    expected = np.sort(data.arrays["train"][1])
    assert all(np.array_equal(np.sort(labels), expected) for labels in epochs)
    assert not np.array_equal(epochs[0], epochs[1])


def test_augmentation_touches_train_only():
    data = lab.load_dataset("digits", augment=["affine"], batch_size=360, seed=1)
    plain = lab.load_dataset("digits", batch_size=360, seed=1)
    test_a, _ = next(iter(data.test))
    test_b, _ = next(iter(plain.test))
    np.testing.assert_array_equal(test_a.numpy(), test_b.numpy())
    train_a, labels_a = next(iter(data.train))
    train_b, labels_b = next(iter(plain.train))
    np.testing.assert_array_equal(labels_a.numpy(), labels_b.numpy())
    assert not np.allclose(train_a.numpy(), train_b.numpy())


def test_every_augmentation_runs_on_rgb():
    data = lab.load_dataset("digits", channels=3, image_size=(16, 16), batch_size=8,
                            augment=["crop", "flip", "affine", "color", "sharpness"])
    images, _ = next(iter(data.train))
    assert images.shape == (8, 16, 16, 3) and np.isfinite(images.numpy()).all()


def test_train_subset_per_class():
    data = lab.load_dataset("digits", train_subset_per_class=5)
    assert np.bincount(data.arrays["train"][1]).tolist() == [5] * 10


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="imagenet"), "Unknown dataset 'imagenet'"),
    (dict(name="digits", channels=2), "channels must be 1 or 3"),
    (dict(name="digits", augment=["mixup"]), "Unknown augmentation 'mixup'"),
    (dict(name="digits", validation_split=1.5), "validation_split"),
    (dict(name="digits", batch_size=0), "batch_size"),
    (dict(name="image_folder"), "needs path="),
])
def test_bad_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lab.load_dataset(**kwargs)


# ------------------------------------------------------------------ every local format, written here

def _digits():
    data = lab.load_dataset("digits")
    return data.arrays["train"][0][:40, ..., 0], data.arrays["train"][1][:40]


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_from_npz_and_from_idx(tmp_path, no_local_data):
    x, y = _digits()
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    data = lab.load_dataset("mnist", data_dir=tmp_path)
    assert data.num_examples == {"train": 40, "test": 10} and data.input_shape == (8, 8, 1)
    idx = tmp_path / "idx" / "mnist"
    idx.mkdir(parents=True)
    for name, array in [("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                        ("t10k-images-idx3-ubyte", x[:10]), ("t10k-labels-idx1-ubyte", y[:10])]:
        _write_idx(idx / f"{name}.gz", array)
    from_idx = lab.load_dataset("mnist", data_dir=tmp_path / "idx")
    np.testing.assert_array_equal(from_idx.arrays["train"][0][..., 0], x)
    np.testing.assert_array_equal(from_idx.arrays["test"][1], y[:10])


def test_truncated_idx_file_is_named(tmp_path, no_local_data):
    x, y = _digits()
    for name, array in [("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                        ("t10k-images-idx3-ubyte", x[:10]), ("t10k-labels-idx1-ubyte", y[:10])]:
        _write_idx(tmp_path / f"{name}.gz", array)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (8).to_bytes(4, "big") * 2 + b"\x00" * 7)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz is truncated"):
        lab.load_dataset("mnist", data_dir=tmp_path)


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"batch_label": b"x", b"filenames": [b"f.png"] * n}


def _write_cifar_tar(path):
    with tarfile.open(path, "w:gz") as tar:
        members = {f"data_batch_{i}": _cifar_batch(4, i) for i in range(1, 6)}
        members["test_batch"] = _cifar_batch(3, 9)
        members["batches.meta"] = {b"label_names": [n.encode() for n in "abcdefghij"]}
        for name, value in members.items():
            blob = pickle.dumps(value, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return members


def test_cifar_official_pickles_from_archive_and_folder(tmp_path, no_local_data):
    members = _write_cifar_tar(tmp_path / "cifar-10-python.tar.gz")
    data = lab.load_dataset("cifar10", data_dir=tmp_path)
    assert data.num_examples == {"train": 20, "test": 3} and data.class_names == list("abcdefghij")
    first = members["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(data.arrays["train"][0][0], first)
    folder = tmp_path / "unpacked"
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as tar:
        tar.extractall(folder, filter="data")
    again = lab.load_dataset("cifar10", data_dir=folder)
    np.testing.assert_array_equal(again.arrays["test"][0], data.arrays["test"][0])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_pickle_is_refused_and_nothing_runs(tmp_path, no_local_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Exploit()}))
    with pytest.raises(ValueError, match="Refusing .*data_batch_1.*forbidden"):
        lab.load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


def _write_image_folder(root, size=(12, 10), corrupt=False):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                suffix = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(folder / f"{i}.{suffix}")
    if corrupt:
        (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_image_folder_and_each_archive_type(tmp_path):
    root = tmp_path / "pets"
    _write_image_folder(root)
    folder = lab.load_dataset("image_folder", path=root)
    assert folder.num_examples == {"train": 6, "test": 6} and folder.class_names == ["cat", "dog"]
    assert folder.input_shape == (12, 10, 3)
    for kind in ("tar", "tar.gz", "zip"):
        archive = tmp_path / f"pets.{kind}"
        if kind == "zip":
            with zipfile.ZipFile(archive, "w") as zf:
                for path in root.rglob("*"):
                    zf.write(path, path.relative_to(tmp_path))
        else:
            with tarfile.open(archive, "w:gz" if kind == "tar.gz" else "w") as tar:
                tar.add(root, arcname="pets")
        data = lab.load_dataset("image_folder", path=archive, image_size=(8, 8))
        assert data.num_examples == {"train": 6, "test": 6} and data.input_shape == (8, 8, 3)


def test_mixed_sizes_need_image_size(tmp_path):
    root = tmp_path / "pets"
    _write_image_folder(root)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "train" / "cat" / "big.png")
    with pytest.raises(ValueError, match="different sizes.*image_size"):
        lab.load_dataset("image_folder", path=root)


def test_corrupt_image_is_named_and_skipped_or_refused(tmp_path):
    root = tmp_path / "pets"
    _write_image_folder(root, corrupt=True)
    with pytest.warns(UserWarning, match="broken.jpg"):
        data = lab.load_dataset("image_folder", path=root, cache_dir=tmp_path / "c1")
    assert data.num_examples["train"] == 6
    with pytest.raises(ValueError, match="broken.jpg"):
        lab.load_dataset("image_folder", path=root, on_bad_file="error", cache_dir=tmp_path / "c2")


def test_absurd_image_dimensions_are_refused_before_decoding(tmp_path):
    from keras_resnet_lab.data.images import decode_image

    path = tmp_path / "huge.png"
    Image.new("L", (20000, 500)).save(path)  # a PNG of a few KB that is wider than any real photo
    with pytest.raises(ValueError, match="20000x500"):
        decode_image(path)


def _malicious_tar(path, kind):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("data/train/a/0.png")
        blob = b"x"
        if kind == "traversal":
            info.name = "../../escaped.txt"
        elif kind == "absolute":
            info.name = "/tmp/escaped-absolute.txt"
        elif kind == "symlink":
            info.type, info.linkname, blob = tarfile.SYMTYPE, "/etc/passwd", b""
        elif kind == "hardlink":
            info.type, info.linkname, blob = tarfile.LNKTYPE, "../../outside", b""
        elif kind == "device":
            info.type, blob = tarfile.CHRTYPE, b""
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "hardlink", "device"])
def test_malicious_tar_is_refused_and_nothing_is_written(tmp_path, kind):
    archive = tmp_path / "bad.tar.gz"
    _malicious_tar(archive, kind)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="Refusing to extract"):
        extract_archive(archive, cache)
    assert not (tmp_path / "escaped.txt").exists()
    assert not list((cache / "extracted").iterdir())  # no half-extracted cache left behind


@pytest.mark.parametrize("kind", ["traversal", "symlink"])
def test_malicious_zip_is_refused(tmp_path, kind):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        if kind == "traversal":
            zf.writestr("../escaped.txt", "x")
        else:
            info = zipfile.ZipInfo("data/link")
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="Refusing to extract"):
        extract_archive(archive, tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists()


def _tar_with_note(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("pets/note.txt")
        info.size, info.mtime = len(text), 0
        tar.addfile(info, io.BytesIO(text.encode()))


def test_the_extraction_cache_is_keyed_on_the_archives_bytes(tmp_path):
    cache = tmp_path / "cache"
    archive = tmp_path / "a" / "pets.tar"
    _tar_with_note(archive, "cat")
    first = extract_archive(archive, cache)

    copy = tmp_path / "copy" / "pets.tar"  # the same bytes, copied later: a new modification time
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    os.utime(copy, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert extract_archive(copy, cache) == first

    changed = tmp_path / "b" / "pets.tar"  # other bytes with the same name, size and time
    _tar_with_note(changed, "dog")
    os.utime(changed, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns))
    assert changed.stat().st_size == archive.stat().st_size
    assert (extract_archive(changed, cache) / "pets" / "note.txt").read_text() == "dog"
    assert (first / "pets" / "note.txt").read_text() == "cat"


def test_interrupted_extraction_leaves_no_trusted_cache(tmp_path, monkeypatch):
    root = tmp_path / "pets"
    _write_image_folder(root)
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="pets")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extract", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "extracted").iterdir())
    monkeypatch.undo()
    assert (extract_archive(archive, tmp_path / "cache") / "pets" / "train").is_dir()


def test_missing_dataset_offline_fails_fast_with_the_fix(tmp_path, no_local_data, monkeypatch):
    from keras_resnet_lab.data import sources

    monkeypatch.setattr(sources, "_online", lambda timeout=3.0: False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        lab.load_dataset("mnist", data_dir=tmp_path)
    assert time.perf_counter() - start < 30
    message = str(error.value)
    assert "mnist.npz" in message and str(tmp_path) in message and "KERAS_RESNET_LAB_DATA" in message
    with pytest.raises(ValueError, match="download=False"):
        lab.load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_augmentation_never_repeats_a_batch_of_transforms():
    from keras_resnet_lab.data.pipeline import Preprocessing, make_augmenter, make_dataset

    x = np.zeros((96, 16, 16, 1), np.uint8)
    x[:, 5:11, 6:9] = 255  # every image the same: only the augmentation tells batches apart
    prep = Preprocessing(1, (16, 16), source_size=(16, 16))
    data = make_dataset(x, np.zeros(96, np.int64), prep, 4, shuffle_seed=0,
                        augmenter=make_augmenter(("affine",)))
    batches = [b.numpy() for epoch in range(2) for b, _ in data]
    assert len(batches) == 48
    assert not any(np.allclose(batches[i], batches[j]) for i in range(48) for j in range(i + 1, 48))
