"""SavedModel export for serving, with the preprocessing inside the graph, and loading it back.

Layout (TF Serving's): `saved_models/<name>/<version>/` with `saved_model.pb`, `variables/`,
`assets/metadata.json` (class names, the input contract, the preprocessing) and
`manifest.sha256` (a checksum of every file). The `serving_default` signature takes raw uint8
images (batch, height, width, channels) of any size with 1, 3 or 4 channels and returns
`probabilities` and `class_index`.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .data.pipeline import Preprocessing, preprocess
from .errors import ConfigError, DataError, LabError
from .files import replace_folder, sha256_file, staging_dir
from .training.run_folder import read_run, run_flips

MANIFEST = "manifest.sha256"
METADATA = "assets/metadata.json"
FORMAT_VERSION = 1


def _to_channels(images, channels):
    """Dynamic 1/3/4 -> `channels` conversion (the channel count is unknown when tracing)."""
    have = tf.shape(images)[-1]
    rgb = tf.cond(have == 1, lambda: tf.repeat(images[..., :1], 3, axis=-1), lambda: images[..., :3])
    if channels == 3:
        return tf.ensure_shape(rgb, [None, None, None, 3])
    gray = tf.cond(have == 1, lambda: images[..., :1], lambda: tf.image.rgb_to_grayscale(rgb))
    return tf.ensure_shape(gray, [None, None, None, 1])


def prepare_images(images, prep):
    """uint8 images of any size and 1/3/4 channels -> the model's input, as training made it.

    Images are converted to the trained channel count and resized to the stored image size,
    then go through the training pipeline's own `preprocess` (pad, resize, scale, standardize).
    """
    source = tuple(prep.source_size or prep.image_size)
    x = _to_channels(tf.convert_to_tensor(images, tf.uint8), prep.channels)
    size = tf.shape(x)[1:3]
    x = tf.cond(
        tf.reduce_all(size == source),
        lambda: x,
        lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(tf.cast(x, tf.float32), source)), 0, 255), tf.uint8),
    )
    x = tf.ensure_shape(x, [None, *source, prep.channels])  # now exactly what training saw
    return preprocess(x, prep)


def make_serving_function(model, prep, test_time_flip=False):
    """uint8 images of any size and channel count -> the model's probabilities and class index.

    `test_time_flip`: the logits are the mean of the image's and its mirror image's, as the run
    was evaluated.
    """

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name="images")])
    def serve(images):
        x = prepare_images(images, prep)
        logits = model(x, training=False)
        if test_time_flip:
            logits = (logits + model(x[:, :, ::-1], training=False)) / 2
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return {"probabilities": probabilities, "class_index": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    return serve


def _export_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _write_manifest(folder):
    lines = [f"{sha256_file(folder / name)}  {name}" for name in _export_files(folder)]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")


def verify_manifest(folder):
    """Raises LabError unless the manifest lists every file of the export with its checksum."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise LabError(f"{folder} has no {MANIFEST}: it was not exported by keras_resnet_lab, or is incomplete. Export it again.")
    try:
        listed = dict(reversed(line.split("  ", 1)) for line in manifest.read_text().splitlines() if "  " in line)
    except ValueError:  # not text: damaged or replaced
        listed = {}
    unlisted = sorted(set(_export_files(folder)) - set(listed))
    if unlisted or not listed:
        raise LabError(f"Refusing {folder}: {', '.join(unlisted[:3]) or 'no file'} is not in {MANIFEST} (changed "
                       "or added after export). Export the model again.")
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            raise LabError(f"Refusing {folder}: {name} is missing (truncated export?). Export the model again.")
        if sha256_file(path) != expected:
            raise LabError(f"Refusing {folder}: {name} does not match its checksum (changed or corrupt). Export the model again.")


def _next_version(model_dir):
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def _load_source(model_or_run_dir, preprocessing, class_names):
    """(model, preprocessing, class names, name) from a run folder or a keras.Model."""
    if isinstance(model_or_run_dir, keras.Model):
        if preprocessing is None:
            shape = model_or_run_dir.input_shape[1:]
            preprocessing = Preprocessing(shape[-1], tuple(shape[:2]), source_size=tuple(shape[:2]))
        names = class_names or [str(i) for i in range(model_or_run_dir.output_shape[-1])]
        return model_or_run_dir, preprocessing, names, model_or_run_dir.name
    return load_run(model_or_run_dir, preprocessing, class_names)


def load_run(run_dir, preprocessing=None, class_names=None):
    """(model, preprocessing, class names, run name) of a finished run folder."""
    model, prep, names, name = read_run(run_dir)
    prep = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in prep.items()})
    return model, preprocessing or prep, class_names or names, name


def export(model_or_run_dir, export_dir=None, *, version=None, overwrite=False, preprocessing=None,
           class_names=None, _before_rename=None):
    """Writes a servable SavedModel to `export_dir/<version>/` and returns that folder.

    Args:
        model_or_run_dir: a finished run folder (from `train`) or a `keras.Model` (then give
            `preprocessing`, a `Preprocessing`, unless its inputs are plain [0, 1] images).
        export_dir: the model's folder; default `saved_models/<run or model name>`.
        version: an integer; default the next free one. An existing version is refused unless
            `overwrite=True`.

    The export is written to a staging folder beside the target and renamed (an existing
    version is swapped atomically on Linux), so a server watching `export_dir` never sees a
    half-written version, nor a moment without one. A run trained with `test_time_flip` is served
    as it was evaluated: each image's logits averaged with its mirror image's.

    A SavedModel is a TensorFlow graph: on Keras's JAX backend, a run folder is exported by
    this same function in a TensorFlow-backend subprocess (its `model.keras` is backend-neutral).

    Example:
        >>> export("runs/report000-mnist-baseline")   # -> saved_models/report000-mnist-baseline/1
    """
    if keras.backend.backend() != "tensorflow":
        return _export_on_tensorflow(model_or_run_dir, export_dir, version, overwrite, preprocessing, class_names)
    model, prep, names, name = _load_source(model_or_run_dir, preprocessing, class_names)
    flips = not isinstance(model_or_run_dir, keras.Model) and run_flips(model_or_run_dir)
    model_dir = Path(export_dir or Path("saved_models") / name)
    version = _next_version(model_dir) if version is None else version
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"version must be a positive integer; received {version!r}.")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists; pass overwrite=True (--overwrite) or another version.")
    if target.exists() and not (target / "saved_model.pb").is_file() and any(target.iterdir()):
        raise ConfigError(f"Refusing to overwrite {target}: it holds files but no saved_model.pb, so it is not an "
                          "export. Choose another export_dir (--export-dir) or version (--version).")
    staging = staging_dir(model_dir, str(version))
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", make_serving_function(model, prep, flips))
        archive.write_out(str(staging), verbose=False)
        metadata = {
            "format_version": FORMAT_VERSION, "name": name, "class_names": list(names),
            "input": {"dtype": "uint8", "shape": "(batch, height, width, channels)", "channels": [1, 3, 4],
                      "any_size": True},
            "model_input_shape": [*prep.image_size, prep.channels], "preprocessing": prep.to_dict(),
            "test_time_flip": flips,
            "outputs": {"probabilities": "float32 (batch, classes)", "class_index": "int32 (batch,)"},
        }
        (staging / "assets").mkdir(exist_ok=True)
        (staging / METADATA).write_text(json.dumps(metadata, indent=1))
        _write_manifest(staging)
        if _before_rename:
            _before_rename(staging)
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export_on_tensorflow(run_dir, export_dir, version, overwrite, preprocessing, class_names):
    if isinstance(run_dir, keras.Model) or preprocessing is not None or class_names is not None:
        raise ConfigError(f"On Keras's {keras.backend.backend()} backend, export takes a run folder (from train) "
                          f"alone: a SavedModel is a TensorFlow graph, written by a TensorFlow-backend process from "
                          f"the run's model.keras. Save your model with train(...), or export under KERAS_BACKEND=tensorflow.")
    command = [sys.executable, "-m", "keras_resnet_lab.cli", "export", str(run_dir)]
    command += ["--export-dir", str(export_dir)] if export_dir else []
    command += ["--version", str(version)] if version is not None else []
    command += ["--overwrite"] if overwrite else []
    done = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode:
        raise LabError(lines[-1].removeprefix("error: ") if lines else f"export of {run_dir} failed.")
    return Path(done.stdout.strip().splitlines()[-1])


class ExportedModel:
    """A loaded export: `predict(images)` on uint8 arrays, plus `class_names` and `metadata`."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.metadata = json.loads((self.path / METADATA).read_text())
        except (OSError, ValueError) as error:
            raise LabError(f"Cannot read {self.path / METADATA} ({error}). Export the model again.") from None
        self.class_names = self.metadata["class_names"]
        self._serve = tf.saved_model.load(str(self.path)).signatures["serving_default"]

    def predict(self, images):
        """uint8 (batch, H, W, C) -> (probabilities (batch, classes), class_index (batch,))."""
        outputs = self._serve(images=tf.convert_to_tensor(np.asarray(images, np.uint8)))
        return outputs["probabilities"].numpy(), outputs["class_index"].numpy()


def resolve_version(path):
    """A version folder as given, or the highest numbered version inside a model folder."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True) \
        if path.is_dir() else []
    if not versions:
        raise LabError(f"{path} holds no exported model (expected <version>/saved_model.pb).")
    return path / str(versions[0])


def load_exported(path):
    """Loads an export after checking its manifest; `path` is a model or a version folder."""
    folder = resolve_version(path)
    verify_manifest(folder)
    try:
        return ExportedModel(folder)
    except Exception as error:  # TensorFlow raises several types for a broken SavedModel
        raise LabError(f"Cannot load {folder} as a SavedModel: {str(error).splitlines()[0]}") from None


def _collect(inputs):
    from .data.images import IMAGE_SUFFIXES

    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


def read_image(path):
    """An image file as a uint8 (H, W, 1 or 3) array: grayscale files stay single-channel.

    Raises:
        DataError: the file is missing or not a readable image (the path is named).
    """
    from .data.images import decode_image

    try:
        return decode_image(path, mode=None)
    except Exception as error:  # PIL raises many types for bad files
        raise DataError(f"Cannot read {path} as an image: {error}") from None


def predict_files(exported, inputs, top_k=3):
    """Classifies image files and folders; returns (rows, problems).

    Each row is {"file", "top": [(class name, probability), ...]}; each problem names a file
    that could not be read, and the other files are still predicted.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer (how many classes to list); received {top_k!r}.")
    rows, problems = [], []
    for path in _collect(inputs):
        try:
            image = read_image(path)
        except DataError as error:  # unreadable, missing or not an image: named, then skipped
            problems.append(str(error))
            continue
        probabilities, _ = exported.predict(image[None])
        order = np.argsort(-probabilities[0])[:top_k]
        rows.append({"file": str(path), "top": [(exported.class_names[i], float(probabilities[0][i])) for i in order]})
    return rows, problems
