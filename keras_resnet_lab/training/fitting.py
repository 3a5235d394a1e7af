"""The one path from a `TrainConfig` and data to a fitted model.

`train`, every keras-tuner trial and the benchmarks go through these three functions, so a
setting means the same thing everywhere:

- `build`: the registered model under the run's precision policy, from its starting `weights`;
- `prepare`: freezing (`trainable_last`, per phase) and compiling (optimizer, schedule, loss, metrics);
- `fit`: `model.fit` phase by phase (each with its batch size), with label smoothing's one-hot
  labels, the `cpu_replicas` split, EMA weight swapping, the plateau schedule, the learning-rate
  log and early stopping.
"""

import keras

from ..errors import ConfigError
from ..models import build_model, freeze
from .callbacks import LearningRateLogger, PinnedEpochs, ResumablePlateau, StepProgbar
from .compiling import compile_model, dtype_policy
from .devices import even_batches, shards
from .replicas import split_batches

PLATEAU_PATIENCE = 3  # epochs without improvement before the "plateau" schedule multiplies the rate by step_gamma


def build(config, input_shape, num_classes):
    """The registered model `config.model` with `config.model_options` and starting `config.weights`,
    under its precision policy."""
    with dtype_policy(config.mixed_precision):
        return build_model(config.model, input_shape=tuple(input_shape), num_classes=num_classes,
                           weights=config.weights, **config.model_options)


def prepare(model, config, num_train_examples, *, keep_compile=False, first_epoch=0):
    """Freezes all but the last `trainable_last` units and compiles `model` as `config` says.

    With `keep_compile`, a model the user compiled keeps its own optimizer, loss and metrics.
    `first_epoch`: the epoch training starts at (a resumed run), whose phase decides what trains.
    """
    if _phased_freezing(config) and not keep_compile:
        # The optimizer knows every variable that any phase will train, so a later phase can
        # unfreeze more layers and keep the optimizer (and the schedule's position).
        compile_model(model, config, config.resolved_phases(), num_train_examples)
        model.optimizer.build(model.trainable_variables)
        set_trainable(model, config.trainable_last_at(first_epoch), config)
        return model
    if config.trainable_last is not None:
        freeze(model, config.trainable_last)
    if not keep_compile:
        compile_model(model, config, config.resolved_phases(), num_train_examples)
    return model


def _phased_freezing(config):
    return any(phase.trainable_last is not None for phase in config.phases)


def set_trainable(model, trainable_last, config):
    """Trains the last `trainable_last` units (all with None) and recompiles with the same optimizer."""
    if trainable_last is None:
        for layer in model.layers:
            layer.trainable = True
    else:
        freeze(model, trainable_last)
    compile_model(model, config, None, None, optimizer=model.optimizer)


def monitor_for(config, has_validation):
    """The metric that picks the best epoch: `config.monitor`, on train metrics without validation."""
    return config.monitor if has_validation else config.monitor.removeprefix("val_")


def fit(model, config, data, *, callbacks=(), initial_epoch=0, epochs=None, steps_per_epoch=None,
        history=(), keeper=None, verbose=0):
    """Fits a prepared `model` on `data` for `config`'s phases; returns the Keras `History`s.

    Args:
        data: a `DatasetBundle` (rebatched for each phase's batch size), or a (train,
            validation) pair of already batched datasets (one batch size for the whole run).
        callbacks: more Keras callbacks, after this module's own.
        initial_epoch, epochs: fit only epochs [initial_epoch, epochs) of the run (a resumed
            run, a Hyperband round); `epochs` defaults to `config.epochs`.
        steps_per_epoch: repeat the training data and cut epochs of this many steps.
        history: the run's earlier per-epoch rows (a resumed plateau schedule replays them).
        keeper: the run's durable `RunKeeper`; without one, `early_stopping_patience` uses
            Keras' `EarlyStopping` for the length of this call.
    """
    spans = _spans(config, epochs, data)
    has_validation = _validation_of(data) is not None
    monitor = monitor_for(config, has_validation)
    own = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema_momentum else []
    own.append(LearningRateLogger())
    if verbose == 1:
        own.append(StepProgbar())
    plateau = None
    if config.schedule == "plateau":
        mode = "min" if "loss" in monitor else "max"
        plateau = ResumablePlateau(list(history), monitor=monitor, mode=mode, factor=config.step_gamma,
                                   patience=PLATEAU_PATIENCE)
        own.append(plateau)
    if keeper is None and config.early_stopping_patience:
        own.append(keras.callbacks.EarlyStopping(monitor, patience=config.early_stopping_patience,
                                                 mode="min" if "loss" in monitor else "max"))
    everything = [*own, *([keeper] if keeper else []), *callbacks]
    histories = []
    trainable_last = config.trainable_last_at(initial_epoch)
    for start, end, learning_rate, batch_size in spans:
        if initial_epoch >= end:
            continue
        if _phased_freezing(config) and config.trainable_last_at(start) != trainable_last:
            trainable_last = config.trainable_last_at(start)
            set_trainable(model, trainable_last, config)
        if plateau is not None:
            plateau.first_epoch = start  # each phase starts its own patience count
            if initial_epoch <= start:
                model.optimizer.learning_rate = learning_rate
        train_split, validation, counter = _splits(data, batch_size, config)
        if steps_per_epoch and hasattr(train_split, "repeat"):  # a tf.data pipeline (not a generator)
            train_split = train_split.repeat()
        with split_batches(model, config.cpu_replicas):
            histories.append(model.fit(
                train_split, validation_data=validation, initial_epoch=max(start, initial_epoch), epochs=end,
                steps_per_epoch=steps_per_epoch, callbacks=[*([PinnedEpochs(counter)] if counter else []), *everything],
                verbose=verbose, shuffle=False,
            ))
        if model.stop_training:  # early stopping or a diverged loss ends the later phases too
            break
    return histories


def _spans(config, epochs, data):
    """The phases as (start, end, learning rate, batch size), cut at `epochs`."""
    spans = config.resolved_phases()
    if isinstance(data, tuple) and len({batch for *_, batch in spans}) > 1:
        raise ConfigError("Phases with their own batch sizes need a DatasetBundle (load_dataset) or arrays, "
                          "which can be rebatched; batch the datasets yourself or drop the phases' batch_size.")
    if epochs is None:
        return spans
    return [(start, min(end, epochs), lr, batch) for start, end, lr, batch in spans if start < epochs]


def _validation_of(data):
    return data[1] if isinstance(data, tuple) else data.validation


def _splits(data, batch_size, config):
    """(train, validation, the train split's `EpochCounter` or None) batched by `batch_size`, with
    one-hot labels under label smoothing."""
    if isinstance(data, tuple):
        (train_split, validation), num_classes, counter = data, None, None
        train_split, validation = even_batches(train_split, training=True), even_batches(validation, training=False)
    else:  # a streamed split is cut into this process's part before its files are read
        rebatched = data.with_batch_size(batch_size)
        if shards() > 1:
            rebatched = rebatched.with_batches(even_batches)
        train_split, validation, num_classes = rebatched.train, rebatched.validation, data.num_classes
        counter = rebatched.train_epoch
    if config.label_smoothing:
        train_split = _one_hot(train_split, num_classes)
        validation = _one_hot(validation, num_classes) if validation is not None else None
    return train_split, validation, counter


def _one_hot(dataset, num_classes):
    import tensorflow as tf

    if num_classes is None:
        raise ConfigError("label_smoothing needs the number of classes: pass the data as a DatasetBundle or arrays.")
    return dataset.map(lambda images, labels, *weights: (images, tf.one_hot(tf.cast(labels, tf.int32), num_classes),
                                                          *weights))
