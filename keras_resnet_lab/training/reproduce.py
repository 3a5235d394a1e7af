"""`reproduce`: the student reports' experiments, each on several random seeds, in one report.

Each (recipe, seed) is one ordinary run folder, `RUN_DIR/<recipe>/seed-<n>`, trained by the
`train` command in its own process (every recipe gets a fresh TensorFlow, with its own thread
set-up), so an interrupted `reproduce` resumes where it stopped: finished runs are read, an
unfinished one resumes from its last epoch. The report is written from the run folders alone
(`reproduction_report`), so it can be rewritten at any time.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from ..errors import ConfigError
from .config import EVALUATION_ONLY, RESUME_NEUTRAL, TrainConfig
from .recipes import RECIPES, get_recipe
from .reproduce_report import write_reproduction_report
from .run_folder import CONFIG, METRICS, STATE

LONG_MINUTES = 15  # recipes longer than this run `long_seeds` seeds, the others `seeds`


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One training run of the plan: a recipe, a random seed and its folder."""

    recipe: str
    seed: int
    folder: Path


def default_recipes():
    """Every recipe a CPU can run without downloads, shortest first."""
    runnable = [r for r in RECIPES.values() if r.needs is None]
    return [r.name for r in sorted(runnable, key=lambda r: r.minutes)]


def plan(recipes=None, seeds=3, long_seeds=1, run_dir="runs/reproduce"):
    """The runs `reproduce` makes: `seeds` random seeds (0, 1, ...) of each recipe, or
    `long_seeds` of those that take over LONG_MINUTES on a 2-core CPU."""
    if seeds < 1 or long_seeds < 1:
        raise ConfigError(f"seeds={seeds}, long_seeds={long_seeds}: each needs at least 1 run.")
    names = list(recipes or default_recipes())
    runs = []
    for name in names:
        recipe = get_recipe(name)
        count = seeds if recipe.minutes <= LONG_MINUTES else min(seeds, long_seeds)
        runs += [PlannedRun(recipe.name, seed, Path(run_dir) / recipe.name / f"seed-{seed}") for seed in range(count)]
    return runs


def _read_json(path):
    """The JSON file's content, or None where it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_metrics(run):
    """The run's metrics.json where its folder holds this recipe and seed trained to the end, else None.

    A folder trained with other settings (an edited recipe) is not finished: `train` then says
    how it differs.
    """
    state, saved, metrics = (_read_json(run.folder / name) for name in (STATE, CONFIG, METRICS))
    if state is None or saved is None or metrics is None or not state.get("finished"):
        return None
    expected = get_recipe(run.recipe).config(seed=run.seed).to_dict()
    defaults = TrainConfig().to_dict()  # settings added since the folder was written have their defaults there
    compared = set(expected) - set(RESUME_NEUTRAL) | set(EVALUATION_ONLY)
    same = all(saved.get(key, defaults[key]) == expected[key] for key in compared)
    return metrics if same else None


def finished_runs(run_dir="runs/reproduce"):
    """(run, metrics) for every finished run folder `RUN_DIR/<recipe>/seed-<n>`, whichever command
    trained it: recipes in plan order (shortest first), then seeds in order. A report written from
    these keeps every experiment measured so far, not only those of the last `--only`."""
    runnable = default_recipes()
    found = []
    for name in runnable + sorted(set(RECIPES) - set(runnable)):
        suffixes = (folder.name.removeprefix("seed-") for folder in Path(run_dir, name).glob("seed-*"))
        for seed in sorted(int(s) for s in suffixes if s.isdigit()):
            run = PlannedRun(name, seed, Path(run_dir, name, f"seed-{seed}"))
            if (metrics := finished_metrics(run)) is not None:
                found.append((run, metrics))
    return found


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """Where a planned run stands: what `reproduce` does with it, and the minutes of training that
    leaves (the recipe's 2-core CPU estimate)."""

    text: str
    minutes_left: float
    done: bool = False


def run_status(run):
    """The planned run's `RunStatus`: "done (test accuracy 0.9942)", "resumes after epoch 3 of 10",
    "to train", or that its folder holds a run with other settings."""
    recipe = get_recipe(run.recipe)
    metrics = finished_metrics(run)
    if metrics is not None:
        return RunStatus(f"done ({metrics['split']} accuracy {metrics['accuracy']:.4f})", 0.0, done=True)
    state = _read_json(run.folder / STATE)
    if state is None:
        return RunStatus("to train", recipe.minutes)
    if state.get("finished"):
        return RunStatus("holds a run with other settings than the recipe's (`train` names them)", recipe.minutes)
    epochs = recipe.config(seed=run.seed).epochs
    done = min(int(state.get("epochs_done", 0)), epochs)
    return RunStatus(f"resumes after epoch {done} of {epochs}", recipe.minutes * (epochs - done) / epochs)


def describe_plan(runs):
    """One line per planned run with its status (`run_status`), then the totals."""
    statuses = [run_status(run) for run in runs]
    lines = [f"{run.recipe} seed {run.seed} -> {run.folder}: {status.text}" for run, status in zip(runs, statuses)]
    done = sum(status.done for status in statuses)
    left = sum(status.minutes_left for status in statuses)
    lines.append(f"{done} of {len(runs)} runs done; about {left:.0f} minutes of training left (the recipes' "
                 "estimates for a 2-core CPU; our 2-core machines differ up to twice in speed).")
    return "\n".join(lines)


def train_command(run, data_dir=None):
    """The `keras-resnet-lab train` command line of one run."""
    command = [sys.executable, "-m", "keras_resnet_lab", "train", "--recipe", run.recipe, "--seed", str(run.seed),
               "--run-dir", str(run.folder)]
    return command + (["--data-dir", str(data_dir)] if data_dir else [])


def reproduce(recipes=None, seeds=3, long_seeds=1, run_dir="runs/reproduce", data_dir=None, quiet=False,
              train=True):
    """Trains every planned run not yet finished (unless `train=False`), then writes the report
    from every finished run folder in `run_dir` (`finished_runs`); returns the report's path.

    Example:
        >>> reproduce(["report004-mnist-lenet", "report004-mnist-resnet"], seeds=3, data_dir="data")
        PosixPath('runs/reproduce/report.md')
    """
    runs = plan(recipes, seeds, long_seeds, run_dir)
    failed = []
    for index, run in enumerate(runs if train else [], start=1):
        label = f"Run {index} of {len(runs)}: {run.recipe}, seed {run.seed}"
        metrics = finished_metrics(run)
        if metrics is not None:
            print(f"{label}: done ({metrics['split']} accuracy {metrics['accuracy']:.4f})", flush=True)
            continue
        print(f"{label} -> {run.folder}", flush=True)
        command = train_command(run, data_dir) + (["--quiet"] if quiet else [])
        code = subprocess.call(command)
        if code != 0:
            failed.append(run)
            print(f"{label} failed (exit {code}); what it trained is kept in {run.folder}: "
                  "run the same reproduce command again to resume it.", flush=True)
    report = write_reproduction_report(run_dir, finished_runs(run_dir))
    if failed:
        names = ", ".join(f"{r.recipe} seed {r.seed}" for r in failed)
        raise ConfigError(f"{len(failed)} of {len(runs)} runs did not finish ({names}); the report in {report} "
                          "has the others. Run the same command again to resume them.")
    return report
