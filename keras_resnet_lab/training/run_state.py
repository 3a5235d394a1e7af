"""The run directory's durable state: what has been trained, the best so far, the history.

Everything is written to a temporary name and renamed, so a run killed at any moment leaves
either the previous complete state or the new one, never a half-written file.
"""

import csv
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Optional


def write_atomic(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_weights_atomic(model, path):
    """`model.save_weights` (which includes optimizer state) to a temporary name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)


def save_model_atomic(model, path):
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)


@dataclasses.dataclass
class RunState:
    epochs_done: int = 0
    history: list = dataclasses.field(default_factory=list)
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    wait: int = 0
    stopped_early: bool = False
    finished: bool = False
    checkpoint: Optional[str] = None

    @classmethod
    def load(cls, run_dir):
        path = Path(run_dir) / "state.json"
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            from ..errors import LabError

            raise LabError(
                f"{path} is corrupt ({error}). Delete the run folder {run_dir} or pass "
                "overwrite=True (--overwrite) to start the run again."
            ) from None

    def save(self, run_dir):
        write_atomic(Path(run_dir) / "state.json", json.dumps(dataclasses.asdict(self), indent=1))
        write_history_csv(self.history, Path(run_dir) / "history.csv")


def write_history_csv(history, path):
    if not history:
        return
    fields = list(dict.fromkeys(key for row in history for key in row))
    with tempfile.NamedTemporaryFile("w", dir=Path(path).parent, delete=False, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    os.replace(f.name, path)
