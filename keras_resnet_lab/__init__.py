"""keras_resnet_lab: plain CNNs against residual networks on Keras 3, trained, tuned and shipped.

Example:
    >>> import keras_resnet_lab as lab
    >>> data = lab.load_dataset("digits", validation_split=0.1)
    >>> model = lab.build_model("resnet18", input_shape=data.input_shape, num_classes=10, stem="small")
    >>> result = lab.train(model, data, epochs=5)
    >>> result.metrics["accuracy"]
"""

import os

# TensorFlow prints C++ INFO lines on import; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402

from .errors import ConfigError, DataError, LabError, TrainingDiverged  # noqa: E402
from .models import build_model, freeze, list_models, parameter_counts, print_parameter_summary  # noqa: E402
from .training import Phase, TrainConfig  # noqa: E402
from .training.recipes import get_recipe, list_recipes  # noqa: E402

_NEEDS_TENSORFLOW = ("DatasetBundle", "load_dataset", "export", "load_exported", "TrainResult", "train",
                     "compare", "configs_for", "configure_cpu_replicas")

if keras.backend.backend() == "tensorflow":
    from .data import DatasetBundle, load_dataset
    from .export import export, load_exported
    from .training.compare import compare, configs_for
    from .training.replicas import configure_cpu_replicas
    from .training.train import TrainResult, train
else:
    # The models build and compile on Keras's other backends (the GPU benchmark runs them on JAX);
    # the data pipeline, training loop and export are tf.data and SavedModel code.
    def __getattr__(name):
        if name in _NEEDS_TENSORFLOW:
            raise AttributeError(
                f"keras_resnet_lab.{name} needs Keras's TensorFlow backend; this process runs "
                f"{keras.backend.backend()!r}. Unset KERAS_BACKEND or set it to 'tensorflow'."
            )
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = [
    "ConfigError", "DataError", "DatasetBundle", "LabError", "Phase", "TrainConfig", "TrainResult",
    "TrainingDiverged", "build_model", "compare", "configs_for", "configure_cpu_replicas", "export", "load_exported", "freeze", "get_recipe", "list_models",
    "list_recipes", "load_dataset", "parameter_counts", "print_parameter_summary", "train",
]
