"""Reading a folder of `<split>/<class>/<image>` files into uint8 arrays, decoded once and cached."""

import hashlib
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..files import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
MAX_SIDE = 16384
MAX_PIXELS = 64_000_000
PROGRESS_THRESHOLD = 5000
SPLIT_ALIASES = {"train": ("train", "training"), "test": ("test", "testing", "val", "validation")}


def find_split_root(folder):
    """The folder holding `train/` and `test/`: `folder` itself or a single nested folder."""
    folder = Path(folder)
    current = folder
    for _ in range(3):
        names = {p.name.lower() for p in current.iterdir() if p.is_dir()}
        if "train" in names or "training" in names:
            return current
        children = [p for p in current.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(children) != 1:
            break
        current = children[0]
    raise DataError(
        f"{folder} is not an image folder: expected `train/<class>/<image>` and "
        "`test/<class>/<image>` inside it (or inside its single top folder)."
    )


def _split_dir(root, split):
    for alias in SPLIT_ALIASES[split]:
        for candidate in (root / alias, root / alias.capitalize()):
            if candidate.is_dir():
                return candidate
    return None


def _class_folders(split_dir):
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))


def list_images(split_dir, class_names=None):
    """Returns (paths, labels, class_names); classes are the sorted sub-folder names.

    The train split (`class_names=None`) needs two or more classes, each with an image; a test
    split must have exactly the train split's classes, so no class is dropped unseen.
    """
    found = _class_folders(split_dir)
    if class_names is None:
        class_names = found
        if len(class_names) < 2:
            raise DataError(f"{split_dir} has {len(class_names)} class folder(s) ({', '.join(class_names) or 'none'}); "
                            f"a classifier needs two or more: {split_dir}/<class>/<image>.")
    missing, extra = sorted(set(class_names) - set(found)), sorted(set(found) - set(class_names))
    if missing or extra:
        raise DataError(f"{split_dir} must hold the train split's classes: "
                        + "; ".join(filter(None, [missing and f"no folder for {', '.join(missing)}",
                                                  extra and f"{', '.join(extra)} not in the train split"]))
                        + ". Add or remove class folders so both splits match.")
    paths, labels, empty = [], [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (split_dir / name).iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            empty.append(name)
        paths += files
        labels += [label] * len(files)
    if empty:
        raise DataError(f"{split_dir} has empty class folder(s): {', '.join(empty[:5])}. Add images or remove them.")
    return paths, np.asarray(labels, np.int64), class_names


def _to_8_bit(image):
    """A 16-bit integer (0-65535) or float (0-1) grayscale image scaled to 8 bits, not clipped.

    Pillow's `convert("L")` clips such pixels at 255, so a 16-bit PNG would turn almost white.
    Other images are returned unchanged.
    """
    if not image.mode.startswith(("I", "F")):
        return image
    array = np.asarray(image, np.float64)
    top = 65535.0 if image.mode.startswith("I") else 1.0
    return Image.fromarray(np.round(np.clip(array, 0, top) * (255.0 / top)).astype(np.uint8), "L")


def decode_image(path, image_size=None, mode="RGB"):
    """Decodes one image file to a uint8 (H, W, C) array, refusing absurd sizes before decoding.

    `mode` "RGB" or "L"; None keeps a grayscale file single-channel and makes others RGB.
    """
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ValueError(f"refused before decoding: {error}") from None
    with image:
        width, height = image.size
        if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
            raise ValueError(f"image of {width}x{height} pixels is larger than this loader accepts")
        gray = image.mode in ("1", "L", "LA") or image.mode.startswith(("I", "F"))  # any bit depth
        mode = mode or ("L" if gray else "RGB")
        image = _to_8_bit(image).convert(mode)
        if image_size is not None and image.size != (image_size[1], image_size[0]):
            image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
        array = np.asarray(image, np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _decode_all(paths, image_size, mode, on_bad_file):
    def safe_decode(path):
        try:
            return decode_image(path, image_size, mode), None
        except Exception as error:  # PIL raises many types for bad files; each is reported by path.
            return None, f"{path}: {error}"

    progress = None
    if len(paths) >= PROGRESS_THRESHOLD:
        from keras.utils import Progbar

        print(f"Decoding {len(paths):,} images under {Path(paths[0]).parent.parent} (once; then cached)")
        progress = Progbar(len(paths), unit_name="image", verbose=1 if sys.stdout.isatty() else 2)
    results = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for result in pool.map(safe_decode, paths):
            results.append(result)
            if progress is not None and (len(results) % 500 == 0 or len(results) == len(paths)):
                progress.update(len(results))
    problems = [problem for _, problem in results if problem]
    if problems and on_bad_file == "error":
        raise DataError(f"Cannot read {len(problems)} image file(s): " + "; ".join(problems[:5]))
    if problems:
        warnings.warn(
            f"Skipped {len(problems)} unreadable image file(s): " + "; ".join(problems[:10]),
            stacklevel=3,
        )
    keep = [i for i, (array, _) in enumerate(results) if array is not None]
    arrays = [results[i][0] for i in keep]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(
            f"Images in {Path(paths[0]).parent.parent} have different sizes ({len(shapes)} kinds, "
            "e.g. " + ", ".join(str(s[:2]) for s in list(shapes)[:3]) + "); pass image_size=(H, W)."
        )
    if not arrays:
        raise DataError(f"No readable images in {Path(paths[0]).parent.parent}.")
    return np.stack(arrays), keep


def _cache_path(cache_dir, root, split, image_size, mode):
    key = hashlib.sha256(f"{root.resolve()}|{split}|{image_size}|{mode}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "decoded" / f"{root.name}-{split}-{key}.npz"


def content_key(split_dir, paths, on_bad_file):
    """What a decoded split depends on: every file's relative path (hence class), size and
    modification time, and the bad-file policy it was decoded under."""
    return files_key(paths, f"on_bad_file={on_bad_file}", root=split_dir)


def files_key(paths, salt, root=None):
    """A SHA-256 of `salt` and every file's path (relative to `root`, if given), size and modification
    time: it changes when any file is moved, replaced or added, without reading their bytes."""
    digest = hashlib.sha256(salt.encode())
    for path in map(Path, paths):
        info = path.stat()
        name = path.relative_to(root).as_posix() if root is not None else path.as_posix()
        digest.update(f"|{name}|{info.st_size}|{info.st_mtime_ns}".encode())
    return digest.hexdigest()


def save_npz_atomic(path, **arrays):
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def split_files(root, split, class_names=None):
    """(split folder, image paths, labels, class names) of one split of an image folder."""
    split_dir = _split_dir(root, split)
    if split_dir is None:
        raise DataError(f"{root} has no `{split}/` folder (looked for {', '.join(SPLIT_ALIASES[split])}).")
    paths, labels, class_names = list_images(split_dir, class_names)
    if not paths:
        raise DataError(f"{split_dir} has class folders but no image files.")
    return split_dir, paths, labels, class_names


def image_size_of(path):
    """(height, width) of an image file, read from its header."""
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (OSError, Image.DecompressionBombError) as error:
        raise DataError(f"Cannot read {path} ({error}); give image_size=(height, width) or remove the file.") from None


def load_split(root, split, *, image_size, mode, class_names, cache_dir, on_bad_file):
    """Decodes one split of an image folder (or reads its cached decode). Returns x, y, classes."""
    split_dir, paths, labels, class_names = split_files(root, split, class_names)
    cached = _cache_path(cache_dir, root, split, image_size, mode)
    key = content_key(split_dir, paths, on_bad_file)
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as data:
                if str(data["key"]) == key:
                    return data["x"], data["y"], class_names
        except Exception:  # noqa: BLE001 - an unreadable or older cache is decoded again
            pass
    x, keep = _decode_all(paths, image_size, mode, on_bad_file)
    y = labels[keep]
    if len(np.unique(y)) < len(class_names):
        lost = sorted(set(class_names) - {class_names[i] for i in np.unique(y)})
        raise DataError(f"{split_dir}: no readable image in class folder(s) {', '.join(lost[:5])}.")
    try:
        save_npz_atomic(cached, x=x, y=y, key=np.asarray(key))
    except OSError as error:  # a full or read-only cache costs a decode next time, never this run
        warnings.warn(f"Cannot cache the decoded images in {cached.parent} ({error.strerror or error}); "
                      "they will be decoded again next time. Set cache_dir (or $KERAS_RESNET_LAB_CACHE).", stacklevel=2)
    return x, y, class_names
