"""keras_resnet_lab: plain CNNs against residual networks on Keras 3, trained, tuned and shipped.

Example:
    >>> import keras_resnet_lab as lab
    >>> model = lab.build_model("resnet18", input_shape=(8, 8, 1), num_classes=10, stem="small")
    >>> data = lab.load_dataset("digits")
    >>> result = lab.train(model, data, epochs=5)
"""

from .errors import ConfigError, DataError, LabError, TrainingDiverged
from .models import build_model, freeze, list_models, parameter_counts

__version__ = "0.1.0"
__all__ = [
    "ConfigError", "DataError", "LabError", "TrainingDiverged",
    "build_model", "freeze", "list_models", "parameter_counts",
]
