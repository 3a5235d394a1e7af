"""`TrainConfig`: every training setting as one plain dataclass.

Python calls, TOML/YAML files and the CLI all fill this same dataclass, and the resolved
config is saved in the run directory.
"""

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Optional, Union

from ..errors import ConfigError, choices_message
from ..files import CHECKPOINT_SUFFIXES

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")
MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")


@dataclasses.dataclass
class Phase:
    """A stretch of epochs with its own learning rate, batch size and trainable units.

    Report 000 used two phases of rates and batch sizes; fine-tuning trains the head first, then
    more of the network at a lower rate (`trainable_last` per phase). Unset fields take the
    run's own settings.
    """

    epochs: int
    learning_rate: Optional[float] = None
    batch_size: Optional[int] = None
    trainable_last: Optional[int] = None


@dataclasses.dataclass
class TrainConfig:
    """All settings of one training run. Every field has a default.

    Example:
        >>> config = TrainConfig(model="baseline_cnn", dataset="mnist", epochs=15)
        >>> config = TrainConfig.from_file("my_run.toml")
    """

    model: str = "baseline_cnn"
    model_options: dict = dataclasses.field(default_factory=dict)
    # None, "imagenet" or a .pth/.safetensors path: the starting weights (resnet18 to resnet152).
    weights: Optional[str] = None
    dataset: str = "mnist"
    dataset_options: dict = dataclasses.field(default_factory=dict)
    data_dir: Optional[str] = None
    epochs: int = 10
    batch_size: int = 128
    # A name, or a Keras optimizer's serialization (`train` accepts the object itself).
    optimizer: Union[str, dict] = "adam"
    # A number, or a Keras LearningRateSchedule's serialization (the object itself in `train`).
    learning_rate: Union[float, dict] = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    step_epochs: int = 30
    step_gamma: float = 0.1
    phases: list = dataclasses.field(default_factory=list)
    ema_momentum: Optional[float] = None
    clipnorm: Optional[float] = None
    clipvalue: Optional[float] = None
    label_smoothing: float = 0.0
    # Test (and export): average the logits of each image and its mirror image. The best epoch is
    # still chosen on plain validation accuracy; metrics.json also holds the plain test figures.
    test_time_flip: bool = False
    validation_split: float = 0.1
    monitor: str = "val_accuracy"
    early_stopping_patience: Optional[int] = None
    trainable_last: Optional[int] = None
    seed: int = 0
    mixed_precision: bool = False
    steps_per_execution: Optional[int] = None  # None: chosen per model, see compiling.default_steps_per_execution
    jit_compile: bool = False
    cpu_replicas: int = 1  # >1: each batch split across that many CPU cores, see training.replicas
    devices: Optional[int] = None  # local GPUs (or virtual CPU devices) to train on; None: all, see training.devices
    run_dir: Optional[str] = None
    overwrite: bool = False
    reports: bool = True  # plots and report pages at the end of the run
    verbose: Union[str, int] = "auto"
    recipe: Optional[str] = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values):
        """Builds a config from a mapping, refusing unknown keys with the list of valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in names]
        if unknown:
            raise ConfigError(f"Unknown training setting(s) {unknown}. Valid settings: {', '.join(names)}.")
        config = cls(**values)
        config.phases = _phases(config.phases)
        return config

    @classmethod
    def from_file(cls, path):
        """Reads a TOML (.toml) or YAML (.yaml/.yml) file of settings; a [train] table is accepted."""
        values = read_config_file(path)
        return cls.from_dict(values.get("train", values))

    def replace(self, **changes):
        """A copy with `changes` applied (validated like `from_dict`)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self):
        return dataclasses.asdict(self)

    def identity(self):
        """The settings that decide what a run computes (not where it is written or how it is shown)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_NEUTRAL}

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    # ------------------------------------------------------------------ derived values
    def trainable_last_at(self, epoch):
        """The `trainable_last` in force at `epoch` (0-based): its phase's, else the run's."""
        for (start, end, *_), phase in zip(self.resolved_phases(), self.phases):
            if start <= epoch < end and phase.trainable_last is not None:
                return phase.trainable_last
        return self.trainable_last

    def resolved_phases(self):
        """[(first_epoch, end_epoch, learning_rate, batch_size)] covering all epochs."""
        phases = self.phases or [Phase(self.epochs)]
        spans, start = [], 0
        for phase in phases:
            lr = self.learning_rate if phase.learning_rate is None else phase.learning_rate
            batch = self.batch_size if phase.batch_size is None else phase.batch_size
            spans.append((start, start + phase.epochs, lr, batch))
            start += phase.epochs
        return spans

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Raises ConfigError on the first invalid setting (type, range or choice); returns self."""
        self._validate_types()
        if isinstance(self.optimizer, str):
            _choice("optimizer", self.optimizer, OPTIMIZERS)
        else:
            _serialized("optimizer", self.optimizer, "keras.optimizers.serialize(optimizer)")
        if isinstance(self.learning_rate, dict):
            _serialized("learning_rate", self.learning_rate, "keras.optimizers.schedules.serialize(schedule)")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("monitor", self.monitor, MONITORS)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.steps_per_execution is not None:
            _positive_int("steps_per_execution", self.steps_per_execution)
        if not isinstance(self.learning_rate, dict):
            _positive_float("learning_rate", self.learning_rate)
        _positive_int("step_epochs", self.step_epochs)
        if not 0 < self.step_gamma < 1:
            raise ConfigError(f"step_gamma must be in (0, 1), the factor the rate is multiplied by, e.g. 0.1; "
                              f"received {self.step_gamma!r}.")
        if self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0; received {self.seed!r}.")
        if self.trainable_last is not None and self.trainable_last < 0:
            raise ConfigError(f"trainable_last must be an integer >= 0; received {self.trainable_last!r}.")
        if self.weights is not None and self.weights != "imagenet" and not self.weights.endswith(CHECKPOINT_SUFFIXES):
            raise ConfigError(f"weights must be 'imagenet' or the path of a {' or '.join(CHECKPOINT_SUFFIXES)} file "
                              f"(or unset); received {self.weights!r}.")
        for name in ("weight_decay", "warmup_epochs", "label_smoothing", "validation_split"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a number >= 0; received {getattr(self, name)!r}.")
        if self.ema_momentum is not None and not 0 < self.ema_momentum < 1:
            raise ConfigError(f"ema_momentum must be in (0, 1), e.g. 0.999; received {self.ema_momentum!r}.")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1); received {self.momentum!r}.")
        if self.label_smoothing >= 1 or self.validation_split >= 1:
            raise ConfigError("label_smoothing and validation_split must be below 1.")
        for name in ("clipnorm", "clipvalue"):
            if getattr(self, name) is not None:
                _positive_float(name, getattr(self, name))
        if self.early_stopping_patience is not None:
            _positive_int("early_stopping_patience", self.early_stopping_patience)
        if self.monitor.startswith("val_") and not self.validation_split and self.early_stopping_patience:
            raise ConfigError(
                f"Early stopping monitors {self.monitor!r} but validation_split is 0: "
                "set validation_split (e.g. 0.1) or monitor='loss'."
            )
        self._validate_phases()
        self._validate_cpu_replicas()
        if self.devices is not None:
            _positive_int("devices", self.devices)
        if self.verbose not in ("auto", "quiet", "bar", "line", 0, 1, 2):
            raise ConfigError(choices_message("verbose", self.verbose, ("auto", "quiet", "bar", "line")))
        return self

    def _validate_types(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), hints[field.name])
        for table in ("model_options", "dataset_options"):
            for key in getattr(self, table):
                if not isinstance(key, str) or not key.isidentifier():
                    raise ConfigError(f"{table} keys must be option names; received {key!r}.")

    def _validate_cpu_replicas(self):
        _positive_int("cpu_replicas", self.cpu_replicas)
        for _, _, _, batch_size in self.resolved_phases():
            if batch_size < self.cpu_replicas:
                raise ConfigError(
                    f"cpu_replicas={self.cpu_replicas} splits each batch into that many parts, but batch_size "
                    f"is {batch_size}; use a batch size of at least {self.cpu_replicas}, or fewer replicas."
                )

    def _validate_phases(self):
        for index, phase in enumerate(self.phases, start=1):
            _positive_int(f"phases[{index}].epochs", phase.epochs)
            if phase.learning_rate is not None:
                _positive_float(f"phases[{index}].learning_rate", phase.learning_rate)
            if phase.batch_size is not None:
                _positive_int(f"phases[{index}].batch_size", phase.batch_size)
            if phase.trainable_last is not None and (not isinstance(phase.trainable_last, int)
                                                     or isinstance(phase.trainable_last, bool) or phase.trainable_last < 0):
                raise ConfigError(f"phases[{index}].trainable_last must be an integer >= 0; "
                                  f"received {phase.trainable_last!r}.")
        total = sum(p.epochs for p in self.phases)
        if self.phases and total != self.epochs:
            raise ConfigError(
                f"The phases add up to {total} epochs but epochs is {self.epochs}; "
                f"set epochs={total} or change the phases."
            )


# Settings that may differ between a run and its resumption without changing what it computes.
# Settings that only decide how the trained model is evaluated: a run resumes with another value.
EVALUATION_ONLY = ("test_time_flip",)
RESUME_NEUTRAL = ("run_dir", "overwrite", "verbose", "data_dir", "cpu_replicas", "devices", "reports", *EVALUATION_ONLY)

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table (dict)",
               list: "a list", type(None): "unset (None)"}


def _matches(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return _is_number(value)
    return isinstance(value, kind)


def _check_type(name, value, hint):
    kinds = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    if not any(_matches(value, kind) for kind in kinds):
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise ConfigError(f"{name} must be {expected}; received {value!r} ({type(value).__name__}).")


def _serialized(name, value, how):
    if not ({"class_name", "config"} <= set(value)):
        raise ConfigError(f"{name} as a table must be a Keras serialization with class_name and config "
                          f"(from {how}); received {value!r}.")


def _phases(phases):
    if not isinstance(phases, (list, tuple)):
        raise ConfigError(f"phases must be a list of {{epochs, learning_rate, batch_size, trainable_last}} tables; "
                          f"received {phases!r}.")
    result = []
    for index, phase in enumerate(phases, start=1):
        if isinstance(phase, Phase):
            result.append(phase)
            continue
        fields = {f.name for f in dataclasses.fields(Phase)}
        if not isinstance(phase, dict) or not set(phase) <= fields or "epochs" not in phase:
            raise ConfigError(f"phases[{index}] must be a table with epochs (and optionally learning_rate, batch_size, "
                              f"trainable_last); received {phase!r}.")
        result.append(Phase(**phase))
    return result


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(choices_message(name, value, choices))


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; received {value!r}.")


def _positive_float(name, value):
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number; received {value!r}.")


def read_config_file(path):
    """Reads a TOML, YAML or JSON mapping (a run's config.json reruns it), with one clear error for
    a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text())
            if not isinstance(values, dict):
                raise ConfigError(f"{path} must hold a mapping of settings.")
            return values
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(path.read_text())
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(path.read_text())
            if not isinstance(values, dict):
                raise ConfigError(f"{path} must hold a mapping of settings.")
            return values
    except ConfigError:
        raise
    except Exception as error:  # tomllib and yaml raise their own types
        raise ConfigError(f"Cannot parse {path}: {error}") from None
    raise ConfigError(f"Config file {path} must end in .toml, .yaml, .yml or .json.")


def write_toml(values, path):
    """Writes a flat-or-nested mapping of plain values as TOML (enough for our configs)."""
    lines, tables = [], []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((f"[{key}]", value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            tables.extend((f"[[{key}]]", item) for item in value)
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for header, table in tables:
        lines.append(f"\n{header}")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    Path(path).write_text("\n".join(lines) + "\n")


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)
