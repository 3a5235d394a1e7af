"""keras-tuner searches over learning rates, block counts and other settings.

Every trial builds, prepares and fits its model through `training.fitting`, the path `train`
takes, so a tuned setting (label smoothing, mixed precision, `trainable_last`, a schedule, EMA,
early stopping) means exactly what it means in `train`. Searches live in
`tuning/<project>/`: keras-tuner's trial files, a leaderboard, plots and `best.toml`, a config
that `keras-resnet-lab train --config` accepts as is.
"""

import dataclasses
import errno
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

import keras
import keras_tuner as kt

from .data import load_dataset
from .errors import ConfigError, LabError, choices_message
from .files import markdown_table, write_text_atomic
from .training import fitting
from .training.config import MONITORS, TrainConfig, read_config_file, write_toml
from .training.recipes import get_recipe
from .training.replicas import configure_cpu_replicas
from .training.devices import PROCESS_ENV, check_batch_sizes, device_count, distributed
from .training.train import check_config, with_pretrained_inputs

TUNERS = ("hyperband", "random", "bayesian", "grid")
CHIEF_WAIT_ENV = "KERAS_RESNET_LAB_CHIEF_WAIT"  # seconds a worker waits for the chief (default 120)
LOG_LR = {"min": 1e-4, "max": 3e-2, "sampling": "log"}
DEFAULT_SPACES = {
    "baseline_cnn": {"learning_rate": LOG_LR, "model_options.conv_dropout": [0.0, 0.1, 0.25, 0.5],
                     "model_options.dense_dropout": [0.0, 0.1, 0.25, 0.5]},
    "lenet5": {"learning_rate": LOG_LR, "model_options.activation": ["relu", "leaky_relu"]},
    "mnist_resnet": {"learning_rate": LOG_LR, "model_options.num_blocks.stage1": {"min": 0, "max": 3},
                     "model_options.num_blocks.stage2": {"min": 0, "max": 3},
                     "model_options.activation": ["relu", "leaky_relu"]},
    "cifar_resnet": {"learning_rate": {"min": 1e-3, "max": 0.3, "sampling": "log"},
                     "model_options.depth": [20, 32, 44, 56],
                     # decoupled, so scaled by the rate: at 0.1, 5e-3 beat 5e-4 on 3 of 3 seeds (10 epochs, README)
                     "weight_decay": {"min": 1e-4, "max": 1e-2, "sampling": "log"}},
    "resnet": {"learning_rate": LOG_LR, "weight_decay": {"min": 1e-5, "max": 1e-3, "sampling": "log"},
               "model_options.block_dropout": [0.0, 0.1, 0.2]},
}


def default_search_space(model):
    """The family's default space: learning rate (log-uniform) and its structural choices."""
    if model in DEFAULT_SPACES:
        return dict(DEFAULT_SPACES[model])
    if model.startswith("cifar_resnet"):
        return dict(DEFAULT_SPACES["cifar_resnet"])
    if model.startswith("resnet"):
        return dict(DEFAULT_SPACES["resnet"])
    return {"learning_rate": LOG_LR}


def define_hyperparameter(hp, name, spec):
    """A value -> Fixed; a list -> Choice; {min, max[, step, sampling]} -> Int or Float."""
    if isinstance(spec, dict) and "fixed" in spec:
        return hp.Fixed(name, spec["fixed"])
    if isinstance(spec, dict) and "values" in spec:
        return hp.Choice(name, spec["values"])
    if isinstance(spec, (list, tuple)):
        return hp.Choice(name, list(spec))
    if isinstance(spec, dict) and {"min", "max"} <= set(spec):
        low, high = spec["min"], spec["max"]
        if low > high:
            raise ConfigError(f"Search space {name!r}: min {low} is above max {high}.")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) and "sampling" not in spec:
            return hp.Int(name, low, high, step=spec.get("step", 1))
        return hp.Float(name, float(low), float(high), sampling=spec.get("sampling", "linear"), step=spec.get("step"))
    if isinstance(spec, dict):
        raise ConfigError(f"Search space {name!r}: use a value, a list of choices, or {{min, max}}; received {spec!r}.")
    return hp.Fixed(name, spec)


def apply_values(config, values):
    """A TrainConfig with hyperparameter `values` applied (`model_options.x`, `num_blocks.stageN`)."""
    changes = {"model_options": dict(config.model_options), "dataset_options": dict(config.dataset_options)}
    stages = {}
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        parts = name.split(".")
        if parts[0] in ("model_options", "dataset_options") and len(parts) == 3 and parts[2].startswith("stage"):
            stages.setdefault((parts[0], parts[1]), {})[int(parts[2][5:])] = value
        elif parts[0] in ("model_options", "dataset_options") and len(parts) == 2:
            changes[parts[0]][parts[1]] = value
        elif len(parts) == 1:
            changes[name] = value
        else:
            raise ConfigError(f"Cannot apply hyperparameter {name!r}: use a TrainConfig field or model_options.<option>.")
    for (table, option), by_stage in stages.items():
        changes[table][option] = [by_stage[i] for i in sorted(by_stage)]
    return config.replace(**changes)


def check_search_space(base, space):
    """Applies every choice (and each range's ends) to `base` and validates it, before the search."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"search_space must be a table of {{name: spec}}; received {space!r}.")
    for name, spec in space.items():
        define_hyperparameter(kt.HyperParameters(), name, spec)
        if isinstance(spec, dict) and {"min", "max"} <= set(spec):
            values = [spec["min"], spec["max"]]
        elif isinstance(spec, dict):
            values = spec.get("values", [spec.get("fixed")])
        else:
            values = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        for value in values:
            try:
                check_config(apply_values(base, {name: value}))
            except ConfigError as error:
                raise ConfigError(f"Search space {name!r}: the value {value!r} is not valid: {error}") from None


def _merged(histories):
    """One Keras `History` for a trial fitted in several phases."""
    merged = keras.callbacks.History()
    merged.epoch = []
    for history in histories:
        merged.epoch += history.epoch
        for key, values in history.history.items():
            merged.history.setdefault(key, []).extend(values)
    return merged


class LabHyperModel(kt.HyperModel):
    """Builds, prepares and fits each trial's model through `training.fitting`, as `train` does."""

    def __init__(self, base_config, search_space, bundle, timings_path):
        super().__init__(name=base_config.model)
        self.base_config = base_config
        self.search_space = search_space
        self.bundle = bundle
        self.timings_path = timings_path
        self.timings = _read_timings(timings_path)

    def config_for(self, hp):
        for name, spec in self.search_space.items():
            define_hyperparameter(hp, name, spec)
        return apply_values(self.base_config, hp.values)

    def build(self, hp):
        config = self.config_for(hp)
        model = fitting.build(config, self.bundle.input_shape, self.bundle.num_classes)
        return fitting.prepare(model, config, self.bundle.num_examples["train"])

    def fit(self, hp, model, *args, callbacks=None, epochs=None, **kwargs):
        config = self.config_for(hp)
        key = json.dumps(hp.values, sort_keys=True, default=str)
        start = time.perf_counter()
        histories = fitting.fit(model, config, self.bundle, callbacks=list(callbacks or []),
                                initial_epoch=kwargs.get("initial_epoch", 0), epochs=epochs or config.epochs,
                                verbose=kwargs.get("verbose", 1))
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start
        # Written before the trial ends, so the chief of a distributed search sees every worker's.
        write_text_atomic(self.timings_path, json.dumps(self.timings, indent=1))
        return _merged(histories)


@dataclasses.dataclass
class TuneConfig:
    """A search: the base training settings, the space, and the tuner's settings."""

    train: TrainConfig
    search_space: Optional[dict] = None
    tuner: str = "hyperband"
    objective: str = "val_accuracy"
    max_trials: int = 10
    max_epochs: int = 5
    executions_per_trial: int = 1
    factor: int = 3
    directory: str = "tuning"
    project_name: Optional[str] = None
    overwrite: bool = False
    seed: int = 0

    @classmethod
    def from_file(cls, path):
        """Top-level tuner settings, a [train] table (or `recipe = NAME`) and a [search_space] table."""
        values = dict(read_config_file(path))
        recipe = values.pop("recipe", None)
        train = values.pop("train", {})
        base = get_recipe(recipe).config(**train) if recipe else TrainConfig.from_dict(train)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ConfigError(f"Unknown tuning setting(s) {unknown} in {path}. Valid: {', '.join(names)}.")
        values.setdefault("project_name", Path(path).stem)
        return cls(train=base, **values)

    def validate(self):
        if self.tuner not in TUNERS:
            raise ConfigError(choices_message("tuner", self.tuner, TUNERS))
        if self.objective not in MONITORS:
            raise ConfigError(choices_message("objective", self.objective, MONITORS))
        for name in ("max_trials", "max_epochs", "executions_per_trial"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; received {value!r}.")
        if self.objective.startswith("val_") and not self.train.validation_split:
            raise ConfigError(f"The objective {self.objective!r} needs a validation split; set validation_split.")
        check_config(self.train)
        check_search_space(self.train, self.search_space)
        return self


@dataclasses.dataclass
class TuneResult:
    """What `tune` returns: the winner, the leaderboard, and where everything was written."""

    best_hyperparameters: dict
    best_config: TrainConfig
    leaderboard: list
    directory: Path
    tuner: kt.Tuner = None

    @property
    def best_model(self):
        """The best trial's model, rebuilt and reloaded from keras-tuner's checkpoint."""
        return self.tuner.get_best_models(1)[0]


def _check_trial_files(project_dir):
    """A corrupt or half-written trial file gets an error naming it, not a JSON traceback."""
    for path in [project_dir / "oracle.json", *sorted(project_dir.glob("trial_*/trial.json"))]:
        if not path.is_file():
            continue
        try:
            json.loads(path.read_text())
        except ValueError as error:
            fix = f"delete {path.parent} to rerun that trial" if path.name == "trial.json" else "pass overwrite=True"
            raise LabError(f"{path} is corrupt or half-written ({error}). Fix: {fix} (--overwrite restarts the search).") from None


def _make_tuner(config, hypermodel):
    objective = kt.Objective(config.objective, "min" if "loss" in config.objective else "max")
    common = dict(objective=objective, executions_per_trial=config.executions_per_trial, directory=config.directory,
                  project_name=config.project_name, overwrite=config.overwrite, seed=config.seed)
    if config.tuner == "hyperband":
        # Brackets repeat until max_trials (Hyperband alone has no cap, and one bracket may be smaller).
        tuner = kt.Hyperband(hypermodel, max_epochs=config.max_epochs, factor=config.factor,
                             hyperband_iterations=None, **common)
        tuner.oracle.max_trials = config.max_trials
        return tuner
    cls = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "grid": kt.GridSearch}[config.tuner]
    return cls(hypermodel, max_trials=config.max_trials, **common)


def tune(model=None, dataset=None, *, config=None, search_space=None, data_dir=None, train_best=False, **settings):
    """Searches hyperparameters with keras-tuner and returns a `TuneResult`.

    Args:
        model, dataset: names, as for `train` (or give `config`, a `TuneConfig`).
        search_space: {name: spec}; names are TrainConfig fields (`learning_rate`,
            `optimizer`, `weight_decay`, ...) or `model_options.<option>`; `num_blocks` per stage
            as `model_options.num_blocks.stage1`. A spec is a value (fixed), a list (choice) or
            {min, max[, sampling="log"]}. Default: the family's space (`default_search_space`).
        settings: TuneConfig fields (tuner, objective, max_trials, max_epochs, directory,
            project_name, overwrite, seed, ...); others go to the base TrainConfig.
        train_best: retrain the winner for the base config's full epochs through `train`.

    Rerunning an interrupted search continues it: finished trials are kept, the interrupted
    one reruns, and the total stays `max_trials`.
    """
    config = _resolve(model, dataset, config, search_space, data_dir, settings)
    if int(os.environ.get(PROCESS_ENV[1]) or 1) > 1:
        raise ConfigError(f"{PROCESS_ENV[1]} asks for one model trained by several processes; a search instead runs "
                          f"its trials side by side: start a chief and workers (--role, --oracle), each trial on "
                          f"every device of its own machine.")
    address = _oracle_address()
    if address and _is_chief():
        _check_chief_can_listen(*address)
    project_dir = Path(config.directory) / config.project_name
    if config.overwrite and project_dir.exists() and _is_chief():
        _clear_project(project_dir)
    _check_trial_files(project_dir)
    base = config.train
    configure_cpu_replicas(base.cpu_replicas)  # before any TensorFlow op, as in `train`
    keras.utils.set_random_seed(config.seed)
    bundle = load_dataset(base.dataset, data_dir=base.data_dir, batch_size=base.batch_size,
                          validation_split=base.validation_split, seed=base.seed, **base.dataset_options)
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    timings_path = project_dir / f"timings-{tuner_id}.json"
    hypermodel = LabHyperModel(base.replace(epochs=config.max_epochs, phases=[]), config.search_space, bundle,
                               timings_path)
    if address and not _is_chief():  # the chief listens once it has loaded its own data, as this worker has
        _wait_for_chief(*address)
    tuner = _make_tuner(config, hypermodel)
    devices = device_count(base.devices)  # each trial trains on every local device, as `train` does
    if devices > 1:
        check_batch_sizes(devices, [base.batch_size])
    with distributed(devices):
        tuner.search(epochs=config.max_epochs, verbose=0 if base.verbose == "quiet" else 1)
    if not _is_chief():
        return None  # a worker of a distributed search: the chief writes the leaderboard
    _raise_if_all_failed(tuner, project_dir)
    return _report(tuner, config, hypermodel, project_dir, train_best)


def _clear_project(project_dir):
    """Deletes a keras-tuner project folder, and refuses any other folder."""
    if not (project_dir / "oracle.json").is_file() and any(project_dir.iterdir()):
        raise ConfigError(f"Refusing to overwrite {project_dir}: it holds files but no keras-tuner oracle.json, so it "
                          "is not a search of ours. Choose another project_name or directory.")
    shutil.rmtree(project_dir)


def _oracle_address():
    """(host, port) of a distributed search's oracle, checked; None when the search is not distributed."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    host, port = os.environ["KERASTUNER_ORACLE_IP"], os.environ.get("KERASTUNER_ORACLE_PORT", "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"The oracle port must be a number from 1 to 65535; received {port!r} (--oracle HOST:PORT).")
    return host, int(port)


def _check_chief_can_listen(host, port):
    """Refuses, naming the fix, an address the chief could not serve on (keras-tuner would raise from gRPC)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            fix = f"choose a free port (--oracle {host}:PORT) and give the same address to every worker"
        else:
            fix = "use an address of this machine (or 0.0.0.0 for all of them) in --oracle HOST:PORT"
        raise ConfigError(f"The tuning chief cannot listen on {host}:{port}: {error.strerror or error}. Fix: {fix}.") from None


def _wait_for_chief(host, port):
    """A worker waits for its chief, then gives up with the fix (keras-tuner would wait forever, silently)."""
    text = os.environ.get(CHIEF_WAIT_ENV, "120")
    try:
        wait = float(text)
        if not wait > 0:
            raise ValueError(text)
    except ValueError:
        raise ConfigError(f"${CHIEF_WAIT_ENV} must be a number of seconds above 0; received {text!r}.") from None
    deadline = time.monotonic() + wait
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise LabError(f"No tuning chief answers at {host}:{port} after {wait:g} s. Start "
                               f"`keras-resnet-lab tune --role chief --oracle {host}:{port}` first (or fix --oracle); "
                               f"${CHIEF_WAIT_ENV} sets how long workers wait.") from None
            time.sleep(0.5)


def _is_chief():
    """As keras-tuner decides: not distributed, or this process's tuner id is 'chief'."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return True
    return os.environ.get("KERASTUNER_TUNER_ID") == "chief"


def _raise_if_all_failed(tuner, project_dir):
    """keras-tuner keeps a failed trial's reason only in its trial.json: surface it."""
    trials = list(tuner.oracle.trials.values())
    if any(t.score is not None for t in trials):
        return
    reasons = [f"trial {t.trial_id}: {(t.message or 'no message').strip().splitlines()[-1]}" for t in trials]
    raise LabError(f"Every trial in {project_dir} failed. " + "; ".join(reasons[:3]))


def _resolve(model, dataset, config, search_space, data_dir, settings):
    tune_fields = {f.name for f in dataclasses.fields(TuneConfig)} - {"train", "search_space"}
    tune_settings = {k: settings.pop(k) for k in list(settings) if k in tune_fields}
    config = config or TuneConfig(train=TrainConfig())
    train_changes = {**settings, **({"data_dir": str(data_dir)} if data_dir else {})}
    if model:
        train_changes["model"] = model
    if dataset:
        train_changes["dataset"] = dataset
    train_config = with_pretrained_inputs(config.train.replace(**train_changes) if train_changes else config.train)
    config = dataclasses.replace(config, train=train_config, **tune_settings)
    if search_space is not None:
        config.search_space = search_space
    if not config.search_space:
        config.search_space = default_search_space(config.train.model)
    config.project_name = config.project_name or f"{config.train.model}-{config.train.dataset}"
    return config.validate()


def _leaderboard(tuner, timings):
    rows = []
    for trial in tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        epochs = values.get("tuner/epochs", 0) - values.get("tuner/initial_epoch", 0) if "tuner/epochs" in values else None
        if epochs is None:
            history = trial.metrics.get_history(tuner.oracle.objective.name) if trial.metrics.exists(tuner.oracle.objective.name) else []
            epochs = len(history)
        seconds = timings.get(json.dumps(values, sort_keys=True, default=str))
        rows.append({"trial": trial.trial_id, "status": str(trial.status), "score": trial.score,
                     "epochs": epochs, "seconds": round(seconds, 1) if seconds else None,
                     "hyperparameters": {k: v for k, v in values.items() if not k.startswith("tuner/")}})
    sign = 1 if tuner.oracle.objective.direction == "max" else -1
    return sorted(rows, key=lambda r: -sign * r["score"] if r["score"] is not None else math.inf)


def _write_leaderboard(rows, project_dir, objective):
    import csv
    import io

    names = sorted({k for row in rows for k in row["hyperparameters"]})
    header = ["trial", "status", objective, "epochs", "seconds", *names]
    table = [[r["trial"], r["status"], "" if r["score"] is None else f"{r['score']:.4f}", r["epochs"], r["seconds"],
              *[r["hyperparameters"].get(n, "") for n in names]] for r in rows]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *table])
    write_text_atomic(project_dir / "leaderboard.csv", buffer.getvalue())
    cells = [["" if c is None else f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in table]
    write_text_atomic(project_dir / "leaderboard.md", markdown_table(header, cells) + "\n")


def _plot_objective(rows, project_dir, objective):
    from .plots import save_figure
    from matplotlib.figure import Figure

    done = [r for r in rows if r["score"] is not None]
    for key, label, log in (("learning_rate", "learning rate", True), ("num_blocks", "residual blocks (total)", False)):
        xs, ys = [], []
        for row in done:
            hps = row["hyperparameters"]
            if key == "learning_rate" and "learning_rate" in hps:
                xs.append(hps["learning_rate"])
            elif key == "num_blocks":
                blocks = [v for k, v in hps.items() if ".num_blocks" in k or k.endswith(".depth")]
                if not blocks:
                    continue
                xs.append(sum(blocks))
            else:
                continue
            ys.append(row["score"])
        if not xs:
            continue
        figure = Figure(figsize=(5, 3.5))
        axis = figure.subplots()
        axis.scatter(xs, ys)
        if log:
            axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel(objective)
        axis.grid(alpha=0.3)
        save_figure(figure, project_dir / f"objective_vs_{key}.png")


def _read_timings(path):
    """Our per-trial seconds; a damaged file only loses the timings, never the search."""
    try:
        timings = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        timings = {}
    return timings if isinstance(timings, dict) else {}


def _all_timings(project_dir):
    timings = {}
    for path in sorted(project_dir.glob("timings-*.json")):
        for key, seconds in _read_timings(path).items():
            timings[key] = timings.get(key, 0.0) + float(seconds)
    return timings


def _report(tuner, config, hypermodel, project_dir, train_best):
    rows = _leaderboard(tuner, _all_timings(project_dir))
    _write_leaderboard(rows, project_dir, config.objective)
    _plot_objective(rows, project_dir, config.objective)
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = apply_values(config.train, best_hp.values).replace(run_dir=f"runs/{config.project_name}-best", recipe=None)
    best_values = {k: v for k, v in best.to_dict().items()
                   if k not in ("overwrite", "verbose", "data_dir") and v not in ({}, [])}
    write_toml(best_values, project_dir / "best.toml")
    result = TuneResult({k: v for k, v in best_hp.values.items() if not k.startswith("tuner/")}, best, rows,
                        project_dir, tuner)
    if train_best:
        from .training.train import train

        result.best_run = train(best)
    return result


def read_leaderboard(project_dir):
    """The leaderboard a finished (or interrupted) search wrote, as Markdown."""
    path = Path(project_dir) / "leaderboard.md"
    if not path.is_file():
        raise LabError(f"{path} does not exist: run the search first (keras-resnet-lab tune --config ...).")
    return path.read_text()
