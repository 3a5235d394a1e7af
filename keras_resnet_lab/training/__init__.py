"""Training: `TrainConfig`, `train` (in `.train`), recipes and model comparisons.

Only the TensorFlow-free parts load here; `keras_resnet_lab.train` and
`keras_resnet_lab.training.train` load the training loop.
"""

from .config import Phase, TrainConfig

__all__ = ["Phase", "TrainConfig"]
