"""`train`: one call from a model and a dataset to a trained, evaluated, plotted, resumable run."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import keras
import tensorflow as tf

from ..data import DatasetBundle, load_dataset
from ..errors import ConfigError, TrainingDiverged
from ..models import build_model, flops_per_image, freeze, parameter_counts
from ..plots import plot_activations, plot_confusion_matrix, plot_curves, plot_mistakes, plot_samples
from .callbacks import ResumablePlateau, RunKeeper
from .compiling import compile_model, dtype_policy
from .config import TrainConfig
from .replicas import configure_cpu_replicas, split_batches
from .evaluation import classification_metrics, predict_labels
from ..report import write_run_report
from .run_state import RunState, save_model_atomic, write_atomic

# Settings that may differ between a run and its resumption without changing what it computes.
_RESUME_NEUTRAL = ("run_dir", "overwrite", "verbose", "data_dir", "export", "cpu_replicas")
PLATEAU_PATIENCE = 3  # epochs without improvement before the "plateau" schedule multiplies the rate by step_gamma


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained `keras.Model`, with the best weights (by `config.monitor`) restored.
        history: one dict per epoch: loss, accuracy, val_loss, val_accuracy, learning_rate, seconds.
        metrics: test-split accuracy, precision_macro, recall_macro, f1_macro, per_class,
            confusion_matrix, and the model's parameter counts.
        run_dir: the folder holding config, history.csv, checkpoints, model.keras, plots.
        config: the resolved `TrainConfig`.
        export_dir: the SavedModel version folder when `export=True`.
    """

    model: keras.Model
    history: list
    metrics: dict
    run_dir: Path
    config: TrainConfig
    export_dir: Path = None

    def summary_row(self):
        seconds = [row["seconds"] for row in self.history if "seconds" in row]
        return {
            "model": self.config.model,
            "parameters": self.metrics.get("parameters", {}).get("trainable"),
            "epochs": len(self.history),
            "seconds_per_epoch": round(sum(seconds) / len(seconds), 2) if seconds else None,
            "test_accuracy": self.metrics["accuracy"],
            "test_f1_macro": self.metrics["f1_macro"],
        }


def train(model=None, dataset=None, config=None, *, callbacks=(), **settings):
    """Trains `model` on `dataset` and returns a `TrainResult`; resumes an interrupted run.

    Args:
        model: a registered model name, a `keras.Model`, or a `TrainConfig` (then `dataset` is
            omitted).
        dataset: a dataset name or the `DatasetBundle` from `load_dataset`.
        config: a `TrainConfig` to start from; `**settings` override its fields
            (epochs, batch_size, optimizer, learning_rate, schedule, phases, weight_decay,
            clipnorm, label_smoothing, early_stopping_patience, mixed_precision, run_dir, ...).
        callbacks: extra Keras callbacks, run after the run's own checkpointing each epoch.

    Rerunning the same call after an interruption continues from the last completed epoch;
    a finished run is loaded, not retrained, unless `overwrite=True`.

    Example:
        >>> result = train("baseline_cnn", "mnist", data_dir="data", epochs=15)
        >>> result.metrics["accuracy"]
    """
    config, model, dataset = _resolve_config(model, dataset, config, settings)
    config.validate()
    run_dir = _prepare_run_dir(config)
    state = RunState.load(run_dir)
    if state.finished:
        return _load_finished(run_dir, config, state)
    configure_cpu_replicas(config.cpu_replicas)  # before any TensorFlow op: it sets the thread pools
    keras.utils.set_random_seed(config.seed)
    with dtype_policy(config.mixed_precision):
        bundle = dataset if isinstance(dataset, DatasetBundle) else _load_data(config)
        model = _train_model(model, bundle, config, state, run_dir, callbacks)
        return _finish(model, bundle, config, state, run_dir)


def _train_model(model, bundle, config, state, run_dir, callbacks):
    """Builds (unless given), compiles, resumes and fits `model`; returns it with its best weights."""
    model = model if isinstance(model, keras.Model) else _build(config, bundle)
    if config.trainable_last is not None:
        freeze(model, config.trainable_last)
    spans = config.resolved_phases()
    compile_model(model, config, spans, bundle.num_examples["train"])
    if state.checkpoint:
        _restore(model, run_dir / state.checkpoint)
        _say(config, f"Resuming {run_dir} after epoch {state.epochs_done}.")
    with split_batches(model, config.cpu_replicas):
        _fit_phases(model, bundle, config, spans, state, run_dir, list(callbacks))
    best = run_dir / "checkpoints" / "best.weights.h5"
    if best.is_file():
        model.load_weights(best)
    return model


# ---------------------------------------------------------------------------- set-up

def _resolve_config(model, dataset, config, settings):
    if isinstance(model, TrainConfig):
        config, model = model, None
    config = config or TrainConfig()
    if settings:
        config = config.replace(**settings)
    if isinstance(model, str):
        config = config.replace(model=model)
    elif isinstance(model, keras.Model):
        config = config.replace(model=model.name)
    elif model is not None:
        raise ConfigError(f"model must be a registered name, a keras.Model or a TrainConfig; received {type(model).__name__}.")
    if isinstance(dataset, str):
        config = config.replace(dataset=dataset)
    elif isinstance(dataset, DatasetBundle):
        config = config.replace(dataset=dataset.name, batch_size=dataset.batch_size)
    elif dataset is not None:
        raise ConfigError(f"dataset must be a dataset name or a DatasetBundle; received {type(dataset).__name__}.")
    return config, model, dataset


def _prepare_run_dir(config):
    run_dir = Path(config.run_dir or Path("runs") / (config.recipe or f"{config.model}-{config.dataset}"))
    saved = run_dir / "config.json"
    if config.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    elif saved.is_file():
        _check_same_run(config, json.loads(saved.read_text()), run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.run_dir = str(run_dir)
    write_atomic(saved, config.to_json())
    return run_dir


def _check_same_run(config, saved, run_dir):
    current = config.to_dict()
    changed = [k for k in current if k not in _RESUME_NEUTRAL and current[k] != saved.get(k)]
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed[:4])
        raise ConfigError(
            f"{run_dir} holds a run with other settings ({details}). Pass overwrite=True "
            "(--overwrite) to replace it, or another run_dir (--run-dir)."
        )


def _load_data(config):
    options = {"validation_split": config.validation_split, "seed": config.seed, **config.dataset_options}
    return load_dataset(config.dataset, data_dir=config.data_dir, batch_size=config.resolved_phases()[0][3], **options)


def _build(config, bundle):
    return build_model(config.model, input_shape=bundle.input_shape, num_classes=bundle.num_classes,
                       **config.model_options)


def _restore(model, checkpoint):
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(checkpoint)


# ---------------------------------------------------------------------------- training

def _verbosity(setting):
    mapping = {"quiet": 0, "bar": 1, "line": 2}
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return mapping.get(setting, setting)


def _say(config, message):
    if _verbosity(config.verbose):
        print(message, flush=True)


def _splits_for(bundle, batch_size, config):
    data = bundle.with_batch_size(batch_size)
    train_split, validation = data.train, data.validation
    if config.label_smoothing:
        def one_hot(images, labels):
            return images, tf.one_hot(labels, bundle.num_classes)
        train_split = train_split.map(one_hot)
        validation = validation.map(one_hot) if validation is not None else None
    return train_split, validation


def _fit_phases(model, bundle, config, spans, state, run_dir, extra_callbacks):
    monitor = config.monitor if bundle.validation is not None else config.monitor.removeprefix("val_")
    keeper = RunKeeper(run_dir, state, monitor=monitor, patience=config.early_stopping_patience)
    # With EMA, validation and checkpoints see the averaged weights (Keras swaps them in).
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema_momentum else []
    callbacks = [*swap, keeper, keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False),
                 *extra_callbacks]
    plateau = None
    if config.schedule == "plateau":
        plateau = ResumablePlateau(state.history, monitor=monitor, mode="max" if keeper.maximize else "min",
                                   factor=config.step_gamma, patience=PLATEAU_PATIENCE)
        callbacks.append(plateau)
    for start, end, learning_rate, batch_size in spans:
        if state.epochs_done >= end or state.stopped_early:
            continue
        if plateau is not None:
            plateau.first_epoch = start  # each phase starts its own patience count
            if state.epochs_done <= start:
                model.optimizer.learning_rate = learning_rate
        train_split, validation = _splits_for(bundle, batch_size, config)
        model.fit(
            train_split, validation_data=validation, initial_epoch=max(start, state.epochs_done),
            epochs=end, callbacks=callbacks, verbose=_verbosity(config.verbose), shuffle=False,
        )
        if keeper.diverged:
            epoch, batch, loss = keeper.diverged
            kept = f"the last good checkpoint is {run_dir / state.checkpoint}" if state.checkpoint else "no epoch had completed"
            raise TrainingDiverged(
                f"The loss became {loss} at epoch {epoch}, batch {batch} (learning rate {learning_rate:g}); "
                f"{kept}. Lower the learning rate (e.g. {learning_rate / 10:g}) or clip gradients "
                "(clipnorm=1.0), then rerun with overwrite=True."
            )


# ---------------------------------------------------------------------------- results

def _finish(model, bundle, config, state, run_dir):
    y_true, y_pred, probabilities = predict_labels(model, bundle.test)
    metrics = classification_metrics(y_true, y_pred, bundle.class_names)
    metrics["parameters"] = parameter_counts(model)
    metrics["flops_per_image"] = flops_per_image(model)
    metrics["best_epoch"] = state.best_epoch
    metrics["epochs_trained"] = state.epochs_done
    save_model_atomic(model, run_dir / "model.keras")
    write_atomic(run_dir / "data.json", json.dumps(data_contract(bundle), indent=1))
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1))
    plot_curves({config.model: state.history}, run_dir / "plots" / "curves.png", title=f"{config.model} on {config.dataset}")
    plot_confusion_matrix(metrics["confusion_matrix"], bundle.class_names, run_dir / "plots" / "confusion_matrix.png")
    _plot_inside(model, bundle, y_true, y_pred, probabilities, run_dir / "plots")
    state.finished = True
    state.save(run_dir)
    _say(config, f"{config.model}: test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f} "
                 f"({state.epochs_done} epochs; run folder {run_dir})")
    result = TrainResult(model, state.history, metrics, run_dir, config)
    write_run_report(result)
    return _maybe_export(result)


def _plot_inside(model, bundle, y_true, y_pred, probabilities, folder):
    """Sample images, the worst test errors, and activation grids of one test image."""
    images, labels = bundle.arrays["test"]
    plot_samples(images[:16], labels[:16], bundle.class_names, folder / "samples.png", title="Test samples")
    plot_mistakes(y_true, y_pred, probabilities, images, bundle.class_names, folder / "mistakes.png")
    first_batch = next(iter(bundle.test))[0]
    plot_activations(model, first_batch[0].numpy(), path=folder / "activations")


def _maybe_export(result):
    if result.config.export:
        from ..export import export

        result.export_dir = export(result.run_dir)
        _say(result.config, f"Exported a SavedModel to {result.export_dir}")
    return result


def data_contract(bundle):
    """What a served model needs to know about its inputs: classes and preprocessing."""
    return {"dataset": bundle.name, "class_names": bundle.class_names, "input_shape": list(bundle.input_shape),
            "preprocessing": bundle.preprocessing.to_dict()}


def _load_finished(run_dir, config, state):
    _say(config, f"{run_dir} is already trained; loading it (pass overwrite=True to train again).")
    model = keras.saving.load_model(run_dir / "model.keras")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return _maybe_export(TrainResult(model, state.history, metrics, run_dir, config))
