"""Training: `TrainConfig`, `train`, recipes and model comparisons."""

from .config import Phase, TrainConfig
from .train import TrainResult, train

__all__ = ["Phase", "TrainConfig", "TrainResult", "train"]
