"""The one callback Keras lacks: durable run state across phases and restarts.

Keras' EarlyStopping and ModelCheckpoint reset their counters on every `fit()` call, and
BackupAndRestore cannot span phases with different batch sizes, so this callback keeps the
best value, the patience counter and the per-epoch history in `RunState`, and checkpoints
weights with optimizer state after every epoch.
"""

import math
import time

import keras


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate` to each epoch's logs: the rate the epoch's last step used.

    `optimizer.learning_rate` already gives the next step's rate under a schedule. Runs before
    the other callbacks, so the history, keras-tuner and the progress bar all see it.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        optimizer = self.model.optimizer
        schedule = optimizer._learning_rate
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            value = schedule(keras.ops.maximum(optimizer.iterations - 1, 0))
        else:
            value = optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(value))


class RunKeeper(keras.callbacks.Callback):
    """Checkpoints every epoch, keeps the best weights, stops early, and stops on NaN loss."""

    def __init__(self, folder, state, monitor="val_accuracy", patience=None):
        super().__init__()
        self.folder = folder
        self.state = state
        self.monitor = monitor
        self.maximize = "acc" in monitor
        self.patience = patience
        self.diverged = None  # (epoch, batch, loss) once the loss is not finite
        self._epoch_start = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)) or self.diverged is not None:
            return
        # With steps_per_execution > 1 Keras reports once per group of steps, `batch` being the
        # group's last index even past the epoch's end: name the group's real steps.
        last = min(batch + 1, (self.params or {}).get("steps") or batch + 1)
        first = max(batch + 2 - self.model.steps_per_execution, 1)
        self.diverged = (self._epoch + 1, f"{first}-{last}" if first < last else str(last), float(loss))
        self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged:
            return
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["seconds"] = round(time.perf_counter() - self._epoch_start, 3)
        state = self.state
        state.history.append(row)
        state.epochs_done = epoch + 1
        best = self._track_best(row)
        self.folder.save_checkpoint(self.model, state, epoch + 1, best=best)

    def _monitored(self, row):
        """The monitored value; a model compiled without accuracy falls back to its loss."""
        if self.monitor not in row and self.maximize:
            self.monitor = "val_loss" if self.monitor.startswith("val_") else "loss"
            self.maximize = False
        return row.get(self.monitor)

    def _track_best(self, row):
        """Updates the best value and patience count; True when this epoch is the new best."""
        value = self._monitored(row)
        state = self.state
        if value is None or not math.isfinite(value):
            return False
        better = state.best is None or (value > state.best if self.maximize else value < state.best)
        if better or (value == state.best and self._lower_tie_loss(row)):
            state.best, state.best_epoch, state.wait = value, row["epoch"], 0
            return True
        state.wait += 1
        if self.patience and state.wait >= self.patience:
            state.stopped_early = True
            self.model.stop_training = True
        return False

    def _lower_tie_loss(self, row):
        """Breaks a tie in an accuracy monitor by the matching loss.

        A validation split of a few hundred images makes ties common. Without this, the earliest
        epoch with the top accuracy would win, often mid-schedule, over a later epoch with the same
        accuracy and a lower loss.
        """
        if not self.maximize:
            return False
        loss_key = "val_loss" if self.monitor.startswith("val_") else "loss"
        best_row = next((r for r in self.state.history if r["epoch"] == self.state.best_epoch), {})
        loss, best_loss = row.get(loss_key), best_row.get(loss_key)
        return loss is not None and best_loss is not None and loss < best_loss


class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
    """`ReduceLROnPlateau` whose patience count survives a resumed run.

    Keras resets the count at every `fit()`; this replays the epochs the run already recorded
    since the current phase began (`first_epoch`), so a run stopped one epoch before a reduction
    reduces one epoch after resuming. The learning rate itself comes back with the optimizer's
    checkpoint.
    """

    def __init__(self, history, **kwargs):
        super().__init__(**kwargs)
        self.history = history
        self.first_epoch = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.monitor_op is None:
            self._set_monitor_op()
        for row in self.history:
            if row["epoch"] > self.first_epoch:
                self._replay(row)

    def _replay(self, row):
        """What `on_epoch_end` did to the counters that epoch, without touching the optimizer."""
        current = row.get(self.monitor)
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best, self.wait = current, 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and row.get("learning_rate", math.inf) > self.min_lr:
                self.cooldown_counter, self.wait = self.cooldown, 0


class PinnedEpochs(keras.callbacks.Callback):
    """Pins a shuffled train split to Keras's epoch as each epoch begins, so the run shuffles and
    augments epoch `e` the same way whether it is resumed, distributed or neither."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.counter.pin(epoch)

    def on_train_end(self, logs=None):
        self.counter.release(self.epoch + 1)


class StepProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, never past the epoch's step count.

    With several steps per call Keras reports the end of each group of steps, so the last group
    of an epoch of 41 steps showed 48/41; the count is clamped to the epoch's steps.
    """

    def _update_progbar(self, batch, logs=None):
        if self.target is not None:
            batch = min(batch, self.target - 1)
        super()._update_progbar(batch, logs)
