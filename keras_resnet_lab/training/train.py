"""`train`: one call from a model and data to a trained, evaluated, resumable run folder."""

import contextlib
import dataclasses
import sys
import warnings
from pathlib import Path

import keras

from ..data import LOAD_OPTIONS, as_bundle, load_dataset
from ..errors import ConfigError, ProcessLost, TrainingDiverged, choices_message
from ..models import check_options, check_weights_for, flops_per_image, parameter_counts, weights_file
from . import fitting
from .callbacks import RunKeeper
from .config import TrainConfig
from .evaluation import classification_metrics, predict_labels, predict_labels_with_and_without_flip
from ..hardware import check_fast_kernels, environment
from .devices import (barrier, check_batch_sizes, device_count, distributed, local_devices, process_count,
                      process_index, start_processes)
from .replicas import configure_cpu_replicas
from .report import write_run_report
from .run_folder import RunFolder, data_contract, default_run_dir, run_identity

# Settings that decide how a model is compiled: giving any of them recompiles a user-compiled model.
COMPILE_SETTINGS = frozenset({
    "optimizer", "learning_rate", "momentum", "nesterov", "weight_decay", "schedule", "warmup_epochs", "step_epochs",
    "step_gamma", "phases", "ema_momentum", "clipnorm", "clipvalue", "label_smoothing", "steps_per_execution",
    "jit_compile", "trainable_last",
})


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained `keras.Model`, with the best weights (by `config.monitor`) restored.
        history: per-epoch values as Keras' `History.history` has them, a dict of lists: loss,
            accuracy, val_loss, val_accuracy, learning_rate, seconds.
        metrics: on the test split (the validation split when no test data was given, as
            `metrics["split"]` says): loss, accuracy, precision_macro, recall_macro, f1_macro,
            per_class, confusion_matrix; the model's parameter counts and FLOPs; best_epoch.
        run_dir: the run folder (config, identity, history.csv, checkpoints, model.keras, plots).
        config: the resolved `TrainConfig`.
    """

    model: keras.Model
    history: dict
    metrics: dict
    run_dir: Path
    config: TrainConfig

    def summary_row(self):
        seconds = self.history.get("seconds", [])
        return {
            "model": self.config.model,
            "parameters": self.metrics.get("parameters", {}).get("trainable"),
            "epochs": len(seconds),
            "seconds_per_epoch": round(sum(seconds) / len(seconds), 2) if seconds else None,
            "test_accuracy": self.metrics.get("accuracy"),
            "test_f1_macro": self.metrics.get("f1_macro"),
        }


def train(model=None, dataset=None, config=None, *, callbacks=(), validation_data=None, test_data=None,
          num_classes=None, class_names=None, **settings):
    """Trains `model` on `dataset` and returns a `TrainResult`; resumes an interrupted run.

    Args:
        model: a registered model name, any `keras.Model` (compiled or not), or a `TrainConfig`
            (then `dataset` is omitted). A model the user compiled keeps its own compile unless
            a setting about compiling (optimizer, learning_rate, schedule, ...) is given.
        dataset: a dataset name, the `DatasetBundle` from `load_dataset`, a `tf.data.Dataset`
            of (image, label), or NumPy arrays `(x, y)` (uint8 images, or floats in [0, 1]).
        config: a `TrainConfig` to start from; `**settings` override its fields (epochs,
            batch_size, optimizer (a name or a Keras optimizer), learning_rate (a number or a
            Keras schedule), schedule, phases, weight_decay, label_smoothing, run_dir, ...).
        callbacks: extra Keras callbacks, run after the run's own checkpointing each epoch.
        validation_data, test_data, num_classes, class_names: for arrays and `tf.data` data.

    The run folder's identity is the model's architecture, the data and the settings: the same
    call resumes after an interruption (or loads a finished run, unless `overwrite=True`);
    another model, data or settings in the same `run_dir` is refused with the difference named.
    Without `run_dir`, each distinct run gets its own folder under `runs/`.

    Example:
        >>> result = train("baseline_cnn", "mnist", data_dir="data", epochs=15)
        >>> result.metrics["accuracy"], result.history["val_accuracy"][-1]
    """
    config, model, dataset = resolve(model, dataset, config, settings)
    start_processes()  # one of several JAX processes (Keras's variables): before anything runs JAX
    keep_compile = isinstance(model, keras.Model) and model.compiled and not (settings.keys() & COMPILE_SETTINGS)
    configure_cpu_replicas(config.cpu_replicas)  # before any TensorFlow op: it sets the thread pools
    check_fast_kernels()
    if config.weights is not None:  # download, or refuse a missing or damaged file, before the data loads
        weights_file(config.model, config.weights, verify=True)
    count = _device_count(config, model)
    keras.utils.set_random_seed(config.seed)
    bundle = _bundle(config, dataset, validation_data, test_data, num_classes, class_names, model)
    _evaluation_split(bundle)  # data with nothing to evaluate on is refused before it trains
    if dataset is not None:
        config = _with_data(config, bundle, settings)
    if keep_compile:
        config = config.replace(optimizer=keras.optimizers.serialize(model.optimizer))
    with distributed(count):
        if not isinstance(model, keras.Model):
            model = fitting.build(config, bundle.input_shape, bundle.num_classes)
        identity = run_identity(config, model, bundle.identity(), model.get_compile_config() if keep_compile else None)
        folder = RunFolder(config.run_dir or default_run_dir(config, identity), writes=process_index() == 0)
        config = config.replace(run_dir=str(folder.path))
        state = _open(folder, config, identity)
        try:
            return _run(model, bundle, config, state, folder, list(callbacks), keep_compile, count)
        finally:
            folder.unlock()


def _open(folder, config, identity):
    """Process 0 opens (creates, checks or clears) the folder; the others then read what it holds."""
    state = folder.open(config, identity, overwrite=config.overwrite) if folder.writes else None
    barrier("run folder open")
    return state or folder.open(config, identity)


def _run(model, bundle, config, state, folder, callbacks, keep_compile, devices):
    if state.finished and folder.load_metrics().get("test_time_flip", False) != config.test_time_flip:
        _say(config, f"{folder.path} is already trained; evaluating it again with test_time_flip={config.test_time_flip}.")
        return _finish(folder.load_model(), bundle, config, state, folder, devices)
    if state.finished:
        return _load_finished(folder, config, state)
    fitting.prepare(model, config, bundle.num_examples["train"], keep_compile=keep_compile,
                    first_epoch=state.epochs_done)
    if state.checkpoint:
        folder.restore(model, state)
        _say(config, f"Resuming {folder.path} after epoch {state.epochs_done}.")
    with _other_processes_watched(folder, state):
        _fit(model, bundle, config, state, folder, callbacks)
    barrier("checkpoints written")  # every process loads the best epoch process 0 saved
    folder.load_best(model, state)
    return _finish(model, bundle, config, state, folder, devices)


@contextlib.contextmanager
def _other_processes_watched(folder, state):
    """In a run of several processes, one that dies fails the others' next step: say so, and how to resume."""
    try:
        yield
    except Exception as error:
        if process_count() == 1 or type(error).__name__ != "JaxRuntimeError":
            raise
        raise ProcessLost(
            f"Process {process_index()} of {process_count()} stopped: another process of this run is gone "
            f"({str(error).splitlines()[-1][:200]}). Start every process again with the same command: the run "
            f"resumes in {folder.path} after epoch {state.epochs_done}."
        ) from None


def _device_count(config, model):
    """The local devices this run trains on: all by default for a registered model, one for the user's own."""
    if isinstance(model, keras.Model) and config.devices is None:
        return 1  # its variables already live on one device
    if isinstance(model, keras.Model) and config.devices > 1:
        raise ConfigError(f"devices={config.devices} builds the model on the devices, but this run was given a "
                          f"keras.Model built outside them: pass the model's name (or TrainConfig) instead.")
    count = device_count(config.devices)
    if count > 1:
        check_batch_sizes(count, [batch_size for *_, batch_size in config.resolved_phases()])
        if config.cpu_replicas > 1:
            raise ConfigError(f"cpu_replicas={config.cpu_replicas} and {count} devices both split each batch: "
                              f"use one (devices=1 for cpu_replicas).")
        if (config.steps_per_execution or 1) > 1 and keras.backend.backend() == "tensorflow":
            raise ConfigError(f"steps_per_execution={config.steps_per_execution} fails in Keras 3 under TensorFlow's "
                              f"MirroredStrategy ({count} devices): leave it unset, or use devices=1.")
    return count


# ---------------------------------------------------------------------------- set-up

def resolve(model, dataset, config, settings):
    """(validated TrainConfig, model object or None, dataset object or None) from `train`'s arguments."""
    if isinstance(model, TrainConfig):
        config, model = model, None
    if config is not None and not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig; received {type(config).__name__}.")
    config = config or TrainConfig()
    if settings:
        config = config.replace(**_serialize_objects(dict(settings)))
    if isinstance(model, str):
        config = config.replace(model=model)
    elif isinstance(model, keras.Model):
        config = config.replace(model=model.name)
    elif model is not None:
        raise ConfigError(f"model must be a registered name, a keras.Model or a TrainConfig; received {type(model).__name__}.")
    if isinstance(dataset, str):
        config, dataset = config.replace(dataset=dataset), None
    config = with_pretrained_inputs(config)
    return check_config(config, registered_model=not isinstance(model, keras.Model), named_data=dataset is None), \
        model, dataset


def with_pretrained_inputs(config):
    """A pretrained run's data normalized as the checkpoint's network was trained (ImageNet's mean and
    std), unless `dataset_options` sets `standardize` itself (False opts out)."""
    if config.weights is None or "standardize" in config.dataset_options:
        return config
    return config.replace(dataset_options={**config.dataset_options, "standardize": "imagenet"})


def check_config(config, *, registered_model=True, named_data=True):
    """Validates `config` and, where they are used, its model options against the registry and its
    dataset options against `load_dataset`: everything is refused before anything runs. Returns it."""
    config.validate()
    if registered_model:
        check_options(config.model, config.model_options)
        check_weights_for(config.model, config.weights)
    elif config.weights is not None:
        raise ConfigError(f"weights={config.weights!r} builds a registered model; this run was given a keras.Model. "
                          f"Build it with build_model(..., weights=...) and pass dataset_options="
                          f"{{'standardize': 'imagenet'}} for its inputs, or pass the model's name.")
    if named_data:
        for key in config.dataset_options:
            if key not in LOAD_OPTIONS:
                raise ConfigError(choices_message("dataset option", key, LOAD_OPTIONS))
    return config


def _serialize_objects(settings):
    """Optimizer and schedule objects as their Keras serializations, so the config stays plain data."""
    optimizer = settings.get("optimizer")
    if isinstance(optimizer, keras.optimizers.Optimizer):
        settings["optimizer"] = keras.optimizers.serialize(optimizer)
        settings.setdefault("learning_rate", settings["optimizer"]["config"]["learning_rate"])
    rate = settings.get("learning_rate")
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        settings["learning_rate"] = keras.optimizers.schedules.serialize(rate)
    return settings


def _bundle(config, dataset, validation_data, test_data, num_classes, class_names, model):
    if dataset is None:
        options = {"validation_split": config.validation_split, "seed": config.seed, **config.dataset_options}
        return load_dataset(config.dataset, data_dir=config.data_dir, batch_size=config.resolved_phases()[0][3],
                            **options)
    if num_classes is None and class_names is None and isinstance(model, keras.Model):
        num_classes = int(model.output_shape[-1])
    return as_bundle(dataset, validation_data=validation_data, test_data=test_data, num_classes=num_classes,
                     class_names=class_names, batch_size=config.batch_size, validation_split=config.validation_split,
                     seed=config.seed, standardize=config.dataset_options.get("standardize", False))


def _with_data(config, bundle, settings):
    """The config as data given as an object really is: its name, options and validation split."""
    split = bundle.options.get("validation_split") or 0.0
    asked = settings.get("validation_split")
    if asked is not None and asked != split and bundle.source not in ("arrays", "tf.data"):
        raise ConfigError(f"The DatasetBundle was loaded with validation_split={split}; pass "
                          f"validation_split={asked} to load_dataset instead.")
    if config.weights is not None and bundle.preprocessing.mean is None and config.dataset_options.get("standardize") is not False:
        warnings.warn(f"weights={config.weights!r}: this {bundle.source} data is not normalized, but pretrained "
                      f"ResNets expect ImageNet's mean and std: load_dataset(..., standardize='imagenet') does it "
                      f"(tf.data datasets are used as given).", stacklevel=3)
    changes = {"dataset": bundle.name, "dataset_options": bundle.options, "validation_split": split}
    if "batch_size" not in settings and not config.phases:
        changes["batch_size"] = bundle.batch_size
    return config.replace(**changes)


# ---------------------------------------------------------------------------- training

def _verbosity(setting):
    mapping = {"quiet": 0, "bar": 1, "line": 2}
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return mapping.get(setting, setting)


def _say(config, message):
    if _verbosity(config.verbose) and process_index() == 0:
        print(message, flush=True)


def _fit(model, bundle, config, state, folder, callbacks):
    if state.stopped_early or state.epochs_done >= config.epochs:
        return
    keeper = RunKeeper(folder, state, monitor=fitting.monitor_for(config, bundle.validation is not None),
                       patience=config.early_stopping_patience)
    if config.reports and folder.writes:
        callbacks.insert(0, keras.callbacks.TensorBoard(log_dir=str(folder.tensorboard), write_graph=False))
    fitting.fit(model, config, bundle, callbacks=callbacks, initial_epoch=state.epochs_done, history=state.history,
                keeper=keeper, verbose=_verbosity(config.verbose) if folder.writes else 0)
    if keeper.diverged:
        epoch, steps, loss = keeper.diverged
        rate = state.history[-1]["learning_rate"] if state.history else config.resolved_phases()[0][2]
        kept = f"the last good checkpoint is {folder / state.checkpoint}" if state.checkpoint else "no epoch had completed"
        raise TrainingDiverged(
            f"The loss became {loss} at epoch {epoch}, step {steps}; {kept}. Lower the learning rate "
            f"(it was {rate}) or clip gradients (clipnorm=1.0), then rerun with overwrite=True."
        )


# ---------------------------------------------------------------------------- results

def _evaluation_split(bundle):
    if bundle.test is not None:
        return "test", bundle.test
    if bundle.validation is not None:
        return "validation", bundle.validation
    raise ConfigError("There is no test or validation data to evaluate on: pass test_data or validation_data, "
                      "or set validation_split.")


def _finish(model, bundle, config, state, folder, devices):
    split, data = _evaluation_split(bundle)
    if config.test_time_flip:
        (y_true, y_pred, probabilities), plain = predict_labels_with_and_without_flip(model, data)
    else:
        (y_true, y_pred, probabilities), plain = predict_labels(model, data), None
    metrics = {"split": split, **classification_metrics(y_true, y_pred, probabilities, bundle.class_names),
               **_without_flip(plain, bundle.class_names),
               "parameters": parameter_counts(model), "flops_per_image": flops_per_image(model),
               "best_epoch": state.best_epoch, "epochs_trained": state.epochs_done,
               "backend": keras.backend.backend(), "devices": devices, "processes": process_count(),
               "split_sizes": dict(bundle.num_examples),
               "environment": environment(keras.backend.backend(), [str(d) for d in local_devices()])}
    folder.save_results(model, metrics, data_contract(bundle, config.test_time_flip))
    result = TrainResult(model, history_of(state.history), metrics, folder.path, config)
    if config.reports and folder.writes:
        write_run_report(folder.path, result, bundle, (y_true, y_pred, probabilities))
    state.finished = True
    folder.save_state(state)
    _say(config, f"{config.model}: {split} accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f} "
                 f"({state.epochs_done} epochs; run folder {folder.path})")
    return result


def _without_flip(plain_predictions, class_names):
    """With test_time_flip, the plain model's figures too (under "without_test_time_flip")."""
    if plain_predictions is None:
        return {}
    plain = classification_metrics(*plain_predictions, class_names)
    return {"test_time_flip": True, "without_test_time_flip": {key: plain[key] for key in ("accuracy", "loss", "f1_macro")}}


def history_of(rows):
    """Per-epoch rows as Keras' `History.history`: {metric: [value per epoch]}."""
    keys = dict.fromkeys(key for row in rows for key in row if key != "epoch")
    return {key: [row.get(key) for row in rows] for key in keys}


def _load_finished(folder, config, state):
    _say(config, f"{folder.path} is already trained; loading it (pass overwrite=True to train again).")
    return TrainResult(folder.load_model(), history_of(state.history), folder.load_metrics(), folder.path, config)
