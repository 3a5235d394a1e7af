"""The run folder: the one module that knows its file names, reads them and writes them.

A run is identified by its content, not its name: `identity.json` holds a fingerprint of the
architecture (the model's config), the data (name, options, preprocessing, split sizes and a
hash of the pixels) and the training settings. Reopening a folder with another identity is
refused, naming the difference; a folder is never answered with another run's model.

Every file is written to a temporary name and renamed, so a run killed at any moment leaves the
previous complete state or the new one. Only the files listed in `RUN_FILES` are ever deleted
(`overwrite`), a folder that holds something else is left alone, and a lock keeps two processes
from training into one folder.
"""

import csv
import dataclasses
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import keras

from ..errors import ConfigError, LabError
from ..files import atomic_path, write_text_atomic

CONFIG = "config.json"
IDENTITY = "identity.json"
STATE = "state.json"
HISTORY = "history.csv"
MODEL = "model.keras"
METRICS = "metrics.json"
DATA = "data.json"
CHECKPOINTS = "checkpoints"
LEGACY_BEST = f"{CHECKPOINTS}/best.weights.h5"  # where runs before 0.2 kept the best weights, unnamed in state.json
PLOTS = "plots"
TENSORBOARD = "tensorboard"
REPORT_MD, REPORT_HTML = "report.md", "report.html"
LOCK = ".lock"
RUN_FILES = (CONFIG, IDENTITY, STATE, HISTORY, MODEL, METRICS, DATA, CHECKPOINTS, PLOTS, TENSORBOARD,
             REPORT_MD, REPORT_HTML)


@dataclasses.dataclass
class RunState:
    """What has been trained: epochs done, the per-epoch history, the best so far, counters."""

    epochs_done: int = 0
    history: list = dataclasses.field(default_factory=list)
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    wait: int = 0
    stopped_early: bool = False
    finished: bool = False
    checkpoint: Optional[str] = None
    best_checkpoint: Optional[str] = None


def model_fingerprint(model):
    """The architecture part of a run's identity: name, parameter count and a hash of the config."""
    text = json.dumps(model.get_config(), sort_keys=True, default=str)
    return {"name": model.name, "parameters": int(model.count_params()),
            "config_sha256": hashlib.sha256(text.encode()).hexdigest()}


def run_identity(config, model, data_identity, compile_config=None):
    """{architecture, data, training}: what a run folder must match to be resumed or reused."""
    architecture = model_fingerprint(model)
    if config.weights is not None:  # the starting weights by content: another file of the same name is another run
        from ..models import weights_identity

        architecture["weights"] = weights_identity(config.model, config.weights)
    if compile_config is not None:  # the user's own compile() is part of what the run computes
        text = json.dumps(compile_config, sort_keys=True, default=str)
        architecture["compile_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return {"architecture": architecture, "data": data_identity, "training": config.identity()}


def short_hash(identity):
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_run_dir(config, identity):
    """`runs/<recipe>` for a recipe run as published; else `runs/<name>-<8 hex digits of the identity>`.

    Two different models, datasets or settings therefore never share a default folder, and the
    same call always finds its own run again.
    """
    from .recipes import RECIPES

    recipe = RECIPES.get(config.recipe)
    if recipe is not None and recipe.config().identity() == config.identity():
        return Path("runs") / recipe.name
    base = config.recipe or f"{identity['architecture']['name']}-{config.dataset}"
    return Path("runs") / f"{base}-{short_hash(identity)}"


def _differences(saved, current, prefix=""):
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            found += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return found
    return [] if saved == current else [f"{prefix.rstrip('.')}: {saved!r} -> {current!r}"]


class RunFolder:
    """One run's folder. Open it with `open`, which checks, clears or creates it.

    `writes=False`: a reader, for the other processes of a run of several (only process 0
    writes): `open` checks the folder process 0 opened. Saving a model gathers its variables
    from every process, so a reader saves too, into a scratch folder of its own that it removes.
    """

    def __init__(self, path, writes=True):
        self.path = Path(path)
        self.writes = writes
        self._lock_file = None
        self._scratch = None

    def _target(self, name):
        """Where `name` is written: in the folder, or a reader's scratch folder."""
        if self.writes:
            return self / name
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="keras-resnet-lab-reader-"))
        return self._scratch / Path(name).name

    def __truediv__(self, name):
        return self.path / name

    # ------------------------------------------------------------------ opening
    def holds_run(self):
        return (self / STATE).is_file() or (self / IDENTITY).is_file()

    def open(self, config, identity, overwrite=False):
        """Creates the folder or checks that it holds this run; returns its `RunState`.

        Raises:
            ConfigError: the folder holds another run (the difference is named), or it holds
                files that are not a run and `overwrite` would have to delete them.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run_dir {self.path} is a file; choose a folder (--run-dir).")
        if not self.writes:
            self._check_identity(identity)
            return self.load_state()
        if overwrite:
            self.clear()
        elif (self / IDENTITY).is_file():
            self._check_identity(identity)
        elif (self / STATE).is_file():
            raise ConfigError(f"{self.path} holds a run from an earlier version without identity.json; "
                              "pass overwrite=True (--overwrite) or another run_dir (--run-dir).")
        self._create()
        self.lock()
        write_text_atomic(self / CONFIG, config.to_json())
        write_text_atomic(self / IDENTITY, json.dumps(identity, indent=1, sort_keys=True, default=str))
        return self.load_state()

    def _create(self):
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"Cannot create the run folder {self.path}: {error.strerror}. "
                              "Choose another run_dir (--run-dir).") from None

    def _check_identity(self, identity):
        saved = self._read_json(IDENTITY)
        changed = _differences(saved, json.loads(json.dumps(identity, default=str)))
        if changed:
            shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
            raise ConfigError(
                f"{self.path} holds another run ({shown}). Pass overwrite=True (--overwrite) to replace it, "
                "or another run_dir (--run-dir); without run_dir each run gets its own folder."
            )

    def clear(self):
        """Deletes this package's files from the folder, and nothing else.

        Refused for the working folder, its parents, the home folder and `/`.
        """
        if not self.path.exists():
            return
        resolved = self.path.resolve()
        protected = {Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)} | set(Path.cwd().resolve().parents)
        if resolved in protected:
            raise ConfigError(f"Refusing to overwrite {self.path}: it is the working, home or root folder. "
                              "Give a run folder of its own (--run-dir runs/NAME).")
        others = sorted(p.name for p in self.path.iterdir() if p.name not in RUN_FILES and not p.name.startswith("."))
        if not self.holds_run():
            if others:
                raise ConfigError(f"Refusing to overwrite {self.path}: it holds {', '.join(others[:5])}, which is not "
                                  "a run of keras_resnet_lab. Choose an empty or new folder (--run-dir).")
            return
        self.lock()
        for name in RUN_FILES:
            target = self / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    # ------------------------------------------------------------------ lock
    def lock(self):
        """Holds an exclusive lock on the folder for the life of this process (or `unlock`)."""
        if self._lock_file is not None:
            return
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks
            return
        handle = open(self / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise LabError(f"Another process is training into {self.path}; wait for it to finish, "
                           "or choose another run_dir (--run-dir).") from None
        self._lock_file = handle

    def unlock(self):
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # ------------------------------------------------------------------ state and checkpoints
    def load_state(self):
        path = self / STATE
        if not path.is_file():
            return RunState()
        try:
            state = RunState(**self._read_json(STATE))
        except TypeError as error:
            raise self._corrupt(STATE, error) from None
        if state.best_checkpoint is None and state.best_epoch is not None and (self / LEGACY_BEST).is_file():
            state.best_checkpoint = LEGACY_BEST
        return state

    def save_state(self, state):
        if not self.writes:
            return
        write_text_atomic(self / STATE, json.dumps(dataclasses.asdict(state), indent=1))
        if state.history:
            fields = list(dict.fromkeys(key for row in state.history for key in row))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=fields)
            writer.writeheader()
            writer.writerows(state.history)
            write_text_atomic(self / HISTORY, buffer.getvalue())

    def save_weights(self, model, name):
        """`model.save_weights` (optimizer state included) atomically, as `name` in the folder."""
        with atomic_path(self._target(name)) as tmp:
            model.save_weights(tmp)

    def save_checkpoint(self, model, state, epoch, best=False):
        """The epoch's weights (and, if `best`, a copy as the best); then the state naming them;
        then the files it no longer names go. A kill at any point leaves a state whose files exist.
        A reader (`writes=False`) only records the names, as the writer does."""
        name = f"{CHECKPOINTS}/epoch-{epoch:04d}.weights.h5"
        self.save_weights(model, name)
        state.checkpoint = name
        if best:
            state.best_checkpoint = f"{CHECKPOINTS}/best-epoch-{epoch:04d}.weights.h5"
            if self.writes:
                with atomic_path(self / state.best_checkpoint) as tmp:
                    shutil.copyfile(self / name, tmp)
        self.save_state(state)
        if not self.writes:
            return
        # What the state no longer names goes, with anything a kill left between copy and state.
        named = {state.checkpoint, state.best_checkpoint}
        for path in (self / CHECKPOINTS).glob("*.weights.h5"):
            if f"{CHECKPOINTS}/{path.name}" not in named:
                path.unlink(missing_ok=True)

    def restore(self, model, state):
        """Loads the last checkpoint (weights and optimizer state) into a compiled `model`."""
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        self._load_weights(model, state.checkpoint)

    def load_best(self, model, state):
        """Loads the best epoch's weights, if the run kept any, into `model`."""
        if state.best_checkpoint:
            self._load_weights(model, state.best_checkpoint)

    def _load_weights(self, model, name):
        try:
            model.load_weights(self / name)
        except Exception as error:  # h5py and Keras raise several types for a damaged file
            raise self._corrupt(name, str(error).splitlines()[0]) from None

    # ------------------------------------------------------------------ results
    def save_results(self, model, metrics, data_contract):
        """The portable best model, the test metrics and the data contract export needs."""
        from ..models import portable_copy

        with atomic_path(self._target(MODEL)) as tmp:
            portable_copy(model).save(tmp)
        if not self.writes:
            return
        write_text_atomic(self / DATA, json.dumps(data_contract, indent=1))
        write_text_atomic(self / METRICS, json.dumps(metrics, indent=1))

    def load_model(self):
        try:
            return keras.saving.load_model(self / MODEL)
        except Exception as error:  # a damaged zip or config raises several types
            raise self._corrupt(MODEL, str(error).splitlines()[0]) from None

    def load_metrics(self):
        return self._read_json(METRICS)

    def load_data_contract(self):
        return self._read_json(DATA)

    @property
    def tensorboard(self):
        return self.path / TENSORBOARD

    # ------------------------------------------------------------------ helpers
    def _read_json(self, name):
        path = self / name
        if not path.is_file():
            raise LabError(f"{path} is missing: {self.path} is not a finished run folder. Train it first.")
        try:
            return json.loads(path.read_text())
        except ValueError as error:
            raise self._corrupt(name, error) from None

    def _corrupt(self, name, error):
        return LabError(f"{self / name} is corrupt ({error}). Pass overwrite=True (--overwrite) to train the run "
                        f"again, or delete {self.path}.")


def data_contract(bundle, test_time_flip=False):
    """What a served model needs to know about its inputs: classes, preprocessing, mirror averaging."""
    return {"dataset": bundle.name, "class_names": bundle.class_names, "input_shape": list(bundle.input_shape),
            "preprocessing": bundle.preprocessing.to_dict(), "test_time_flip": bool(test_time_flip)}


def run_flips(run_dir):
    """Whether the run was evaluated with test-time flips (its export then averages them too)."""
    return bool(RunFolder(run_dir).load_data_contract().get("test_time_flip", False))


def read_run(run_dir):
    """(model, preprocessing dict, class names, run name) of a finished run folder, for export."""
    folder = RunFolder(run_dir)
    if not (folder / MODEL).is_file() or not (folder / DATA).is_file():
        raise ConfigError(f"{folder.path} is not a finished run folder ({MODEL} and {DATA} expected); train it first.")
    contract = folder.load_data_contract()
    return folder.load_model(), contract["preprocessing"], contract["class_names"], folder.path.name

