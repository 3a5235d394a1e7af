"""keras_resnet_lab: plain CNNs against residual networks on Keras 3, trained, tuned and shipped.

Importing the package starts no framework: Keras and TensorFlow load on first use of a name
that needs them (`build_model`, `load_dataset`, `train`, ...), so the command line's `--help`
and listings answer at once.

Example:
    >>> import keras_resnet_lab as lab
    >>> data = lab.load_dataset("digits", validation_split=0.1)
    >>> model = lab.build_model("resnet18", input_shape=data.input_shape, num_classes=10, stem="small")
    >>> result = lab.train(model, data, epochs=5)
    >>> result.metrics["accuracy"]
"""

import importlib
import os

# TensorFlow prints C++ INFO lines on import; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .hardware import enable_fast_kernels  # noqa: E402

# Before TensorFlow loads: its fast oneDNN kernels on every x86 CPU, not only AVX-512 ones.
enable_fast_kernels()

from .errors import ConfigError, DataError, LabError, TrainingDiverged  # noqa: E402
from .training.config import Phase, TrainConfig  # noqa: E402
from .training.recipes import get_recipe, list_recipes  # noqa: E402

from .version import __version__  # noqa: E402

# name -> module that defines it, imported on first access.
_LAZY = {
    "build_model": ".models", "freeze": ".models", "list_models": ".models", "parameter_counts": ".models",
    "print_parameter_summary": ".models", "portable_copy": ".models", "save_torchvision_weights": ".models",
    "DatasetBundle": ".data", "load_dataset": ".data",
    "train": ".training.train", "TrainResult": ".training.train",
    "compare": ".training.compare", "configs_for": ".training.compare", "reproduce": ".training.reproduce",
    "configure_cpu_replicas": ".training.replicas",
    "export": ".exporting", "load_exported": ".exporting",
    "tune": ".tuning", "TuneConfig": ".tuning", "TuneResult": ".tuning",
}
# Names that exist only on Keras's TensorFlow backend (TensorFlow's thread pools). The rest runs
# on JAX too: tf.data feeds either backend, and export writes its SavedModel from a TensorFlow process.
_NEEDS_TENSORFLOW = {".training.replicas"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module in _NEEDS_TENSORFLOW:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise AttributeError(
                f"keras_resnet_lab.{name} needs Keras's TensorFlow backend; this process runs "
                f"{keras.backend.backend()!r}. Unset KERAS_BACKEND or set it to 'tensorflow'."
            )
    loaded = importlib.import_module(module, __name__)
    value = getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["ConfigError", "DataError", "LabError", "Phase", "TrainConfig", "TrainingDiverged", "get_recipe",
           "list_recipes", *sorted(_LAZY)]
