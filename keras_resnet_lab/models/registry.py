"""The model registry: every named network is a builder function plus its default options."""

import dataclasses
import inspect
from typing import Callable

from ..errors import ConfigError, choices_message
from .pretrained import check_weights, load_pretrained


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: the family builder, the options it is called with, and its defaults."""

    name: str
    builder: Callable
    options: dict
    input_shape: tuple
    num_classes: int
    description: str
    batch_norm: object = False  # True, False, or the name of the option that decides it
    pretrained: bool = False  # whether torchvision checkpoints (weights=...) fit it

    def uses_batch_norm(self, options=None):
        """Whether the model built with `options` has batch normalization (known without building it)."""
        if not isinstance(self.batch_norm, str):
            return bool(self.batch_norm)
        default = inspect.signature(self.builder).parameters[self.batch_norm].default
        return bool({self.batch_norm: default, **self.options, **(options or {})}[self.batch_norm])

    def allowed_options(self):
        params = inspect.signature(self.builder).parameters
        return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]


_REGISTRY: dict = {}


def register(name, builder, *, description, input_shape, num_classes=10, batch_norm=False, pretrained=False,
             **options):
    """Registers `name` as `builder` called with `options` (callers may override any of them).

    `batch_norm`: whether the model has batch normalization, or the option that decides it.
    `pretrained`: whether torchvision ResNet checkpoints map onto it (`build_model(weights=...)`).
    """
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    _REGISTRY[name] = ModelSpec(name, builder, options, tuple(input_shape), num_classes, description, batch_norm,
                                pretrained)


def list_models():
    """Returns the registered model names, sorted.

    Example:
        >>> "resnet18" in keras_resnet_lab.list_models()
        True
    """
    return sorted(_REGISTRY)


def get_spec(name):
    if name not in _REGISTRY:
        raise ConfigError(choices_message("model", name, list_models()))
    return _REGISTRY[name]


def check_options(name, options):
    """Refuses an unknown model name or option before anything is built (or written)."""
    spec = get_spec(name)
    if not isinstance(options, dict):
        raise ConfigError(f"model_options must be a table of options; received {options!r}.")
    allowed = spec.allowed_options()
    for key in options:
        if key not in allowed:
            raise ConfigError(f"Model {name!r} has no option {key!r}. Valid options: {', '.join(allowed)}.")
    return spec


def model_label(name, options=None):
    """The model's registry name with the options that shape it, as reports name it, e.g.
    "cifar_resnet (depth=32)" or "resnet18 (stem=small)"."""
    settings = ", ".join(f"{key}={value}" for key, value in sorted((options or {}).items()))
    return f"{name} ({settings})" if settings else name


def check_weights_for(name, weights):
    """Refuses `weights` the model `name` cannot take, before anything is built or downloaded."""
    weights = check_weights(weights)
    if weights is not None and not get_spec(name).pretrained:
        able = [n for n in list_models() if _REGISTRY[n].pretrained]
        raise ConfigError(f"Model {name!r} takes no pretrained weights (weights={weights!r}); those that do: "
                          f"{', '.join(able)}.")
    return weights


def build_model(name, *, input_shape=None, num_classes=None, weights=None, **options):
    """Builds the registered model `name` as a functional `keras.Model` that outputs logits.

    Args:
        name: a name from `list_models()`, e.g. "baseline_cnn", "mnist_resnet", "cifar_resnet20",
            "resnet18".
        input_shape: (height, width, channels); defaults to the model's usual input.
        num_classes: size of the final `Dense(name="predictions")` layer (the swapped last layer).
        weights: None (random initialization), "imagenet" (torchvision's IMAGENET1K_V1
            checkpoint, downloaded once and checked against its SHA-256) or the path of a
            torchvision / timm state dict (`.pth` or `.safetensors`); for resnet18 to resnet152.
            Other channel counts adapt the first conv (timm's rule); another `num_classes`
            leaves the head fresh; `stem="small"` leaves the stem fresh (each said on stdout).
            The model takes the checkpoint network's own inputs: images in [0, 1] normalized
            with ImageNet's mean and std (`train` and `load_dataset(standardize="imagenet")`
            do this).
        **options: family options (e.g. `stem="small"`, `num_blocks=(1, 2)`, `activation=...`).

    Raises:
        ConfigError (a ValueError): unknown name or option, or an invalid value, before any layer
            is built.

    Example:
        >>> model = build_model("resnet18", input_shape=(8, 8, 1), num_classes=10, stem="small")
    """
    spec = check_options(name, options)
    weights = check_weights_for(name, weights)
    input_shape = tuple(input_shape or spec.input_shape)
    if len(input_shape) != 3 or any(not isinstance(d, int) or d < 1 for d in input_shape):
        raise ConfigError(
            f"input_shape must be (height, width, channels) of positive integers; received "
            f"{input_shape!r}."
        )
    num_classes = spec.num_classes if num_classes is None else num_classes
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer; received {num_classes!r}.")
    options = {**spec.options, **options}
    model = spec.builder(input_shape, num_classes, name=name, **options)
    return load_pretrained(model, name, weights, small_stem=options.get("stem") == "small")
