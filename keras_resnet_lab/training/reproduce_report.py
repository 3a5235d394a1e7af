"""The report of `reproduce`: every experiment's seeds beside its report's figure, and the seed
reports' own questions answered with the measured numbers. Written from the run folders alone.
"""

import json
import statistics
from pathlib import Path

from ..files import write_text_atomic
from ..models import model_label
from ..plots import plot_seed_accuracies
from .recipes import NEEDS, RECIPES, get_recipe
from .report import _write, environment_rows
from .run_folder import STATE

# The seed reports' questions: (heading, the recipes that answer it, how the numbers are read).
QUESTIONS = (
    ("Report 000: does MNIST need more than 21,840 parameters?",
     ("report000-mnist-baseline", "report004-mnist-lenet", "report004-mnist-resnet", "report002-mnist-resnet20",
      "report000-mnist-resnet18", "report000-mnist-resnet50"), "size"),
    ("Report 004: residual blocks against plain ones, the same training otherwise",
     ("report004-mnist-lenet", "report004-mnist-resnet", "digits-baseline-cnn", "digits-mnist-resnet"), "pairs"),
    ("Reports 002 and 003: depth against accuracy on CIFAR-10",
     ("depth-cifar10-resnet8", "depth-cifar10-resnet14", "depth-cifar10-resnet20", "depth-cifar10-resnet32"), "depth"),
)


def _seconds(folder):
    try:
        history = json.loads((folder / STATE).read_text()).get("history", [])
    except (OSError, ValueError):
        return None
    return sum(row.get("seconds") or 0 for row in history)


def summarize(name, finished):
    """The numbers of one recipe over its finished seeds: `finished` is [(run, metrics)]."""
    recipe = get_recipe(name)
    accuracies = [m["accuracy"] for _, m in finished]
    minutes = [s / 60 for s in (_seconds(run.folder) for run, _ in finished) if s is not None]
    first = finished[0][1]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else None
    return {
        "recipe": name, "origin": recipe.report, "reported": recipe.reported,
        "reported_accuracy": recipe.reported_accuracy, "seeds": [run.seed for run, _ in finished],
        "accuracies": accuracies, "mean": statistics.fmean(accuracies), "std": spread,
        "min": min(accuracies), "max": max(accuracies),
        "without_test_time_flip": [m["without_test_time_flip"]["accuracy"] for _, m in finished
                                   if m.get("test_time_flip")] or None,
        "test_loss": statistics.fmean(m["loss"] for _, m in finished),
        "epochs": first.get("epochs_trained"), "minutes": statistics.fmean(minutes) if minutes else None,
        # Trainable weights, as PyTorch and the papers count (batch norm's moving statistics are not parameters).
        "model": recipe.settings["model"],
        "model_label": model_label(recipe.settings["model"], recipe.settings.get("model_options")),
        "parameters": first.get("parameters", {}).get("trainable"),
        "flops_per_image": first.get("flops_per_image"), "test_examples": first.get("num_examples"),
        "beats_mean": None if recipe.reported_accuracy is None else statistics.fmean(accuracies) > recipe.reported_accuracy,
        "beats_every_seed": None if recipe.reported_accuracy is None else min(accuracies) >= recipe.reported_accuracy,
    }


def _accuracy(row):
    text = f"{row['mean']:.2%}"
    if row["std"] is not None:
        text += f" ± {row['std'] * 100:.2f} ({len(row['seeds'])} seeds: {row['min']:.2%} to {row['max']:.2%})"
    text += "" if row["std"] is not None else " (1 seed)"
    if row["without_test_time_flip"]:
        text += f" with test-time flips ({statistics.fmean(row['without_test_time_flip']):.2%} without)"
    return text


def _verdict(row):
    if row["reported_accuracy"] is None:
        return "-"
    if row["beats_every_seed"]:
        return "above on every seed"
    return "above on the mean only" if row["beats_mean"] else "below"


def _minutes(row):
    return "-" if row["minutes"] is None else f"{row['minutes']:.1f}"


def _size_conclusion(rows):
    best = max(rows, key=lambda r: r["mean"])
    small = next((r for r in rows if r["recipe"] == "report000-mnist-baseline"), None)
    text = f"The most accurate is {best['model']} ({best['mean']:.2%}, {best['parameters']:,} parameters)."
    if small and small is not best:
        gap = (best["mean"] - small["mean"]) * 100
        text += (f" The 21,840-parameter CNN reaches {small['mean']:.2%}: {gap:.2f} points behind with "
                 f"{best['parameters'] / small['parameters']:,.0f}x fewer parameters")
        if best["minutes"] and small["minutes"]:
            text += f" and {best['minutes'] / small['minutes']:.1f}x less training time"
        text += "."
    return text


def _pair_conclusion(rows):
    by_name = {r["recipe"]: r for r in rows}
    sentences = []
    for plain, residual, data in (("report004-mnist-lenet", "report004-mnist-resnet", "MNIST"),
                                  ("digits-baseline-cnn", "digits-mnist-resnet", "the 8x8 digits")):
        if plain in by_name and residual in by_name:
            p, r = by_name[plain], by_name[residual]
            spread = max((x["std"] or 0) for x in (p, r)) * 100
            difference = (r["mean"] - p["mean"]) * 100
            side = "ahead of" if difference > 0 else "behind"
            sentences.append(f"On {data} the residual {r['model']} scores {r['mean']:.2%}, {abs(difference):.2f} points "
                             f"{side} the plain {p['model']} ({p['mean']:.2%}); the seeds' spread is {spread:.2f} points, "
                             f"so the difference is {'larger' if abs(difference) > 2 * spread else 'not much larger'} "
                             "than chance.")
    return " ".join(sentences)


def _depth_conclusion(rows):
    rows = sorted(rows, key=lambda r: get_recipe(r["recipe"]).settings["model_options"]["depth"])
    if len(rows) < 2:
        return ""
    depths = [get_recipe(r["recipe"]).settings["model_options"]["depth"] for r in rows]
    steps = ", ".join(f"{d} layers {r['mean']:.2%}" for d, r in zip(depths, rows))
    gain = (rows[-1]["mean"] - rows[0]["mean"]) * 100
    return (f"With the same {rows[0]['epochs']} epochs: {steps}. Going from {depths[0]} to {depths[-1]} layers "
            f"{'adds' if gain >= 0 else 'loses'} {abs(gain):.2f} points; the shortcuts let the deeper networks "
            "train at all, which plain stacks of this depth did not in the paper.")


CONCLUDE = {"size": _size_conclusion, "pairs": _pair_conclusion, "depth": _depth_conclusion}


def _conclusion(rows):
    compared = [r for r in rows if r["reported_accuracy"] is not None]
    every = [r["recipe"] for r in compared if r["beats_every_seed"]]
    measured = f"{len(rows)} experiment{'s' if len(rows) != 1 else ''} measured"
    if not compared:
        return f"{measured}; none has a report's figure to compare with."
    text = f"{measured}; {len(every)} of the {len(compared)} with a report's figure beat it on every random seed"
    others = [r for r in compared if not r["beats_every_seed"]]
    if others:
        text += "; not on every seed: " + ", ".join(f"{r['recipe']} ({_verdict(r)})" for r in others)
    return text + "."


def _where(environment, dates):
    """The machine and versions of the first run, and when the runs were made."""
    rows = environment_rows(environment)[:-1]
    if dates:
        rows[0] = ("dates", f"{dates[0]} to {dates[-1]} ({len(dates)} runs)")
    return rows


def write_reproduction_report(run_dir, finished_runs):
    """`report.md`, `report.html` and `reproduce.json` in `run_dir` from `finished_runs`, a list of
    (planned run, its metrics.json) in plan order."""
    folder = Path(run_dir)
    finished = {}
    for run, metrics in finished_runs:
        finished.setdefault(run.recipe, []).append((run, metrics))
    rows = [summarize(name, runs) for name, runs in finished.items()]
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "reproduce.json", json.dumps(rows, indent=1))
    if not rows:
        return _write(folder, "Reproducing the student reports", [("p", "No run has finished yet.")])[0]
    plot_seed_accuracies([(r["recipe"], r["accuracies"], r["reported_accuracy"]) for r in rows],
                         folder / "accuracies.png")
    environments = [m.get("environment") or {} for runs in finished.values() for _, m in runs]
    environment = environments[0]
    dates = sorted(e["date"] for e in environments if e.get("date"))
    header = ("recipe", "report", "the report's figure", "ours: test accuracy", "vs the report", "epochs",
              "minutes per run", "parameters", "test loss")
    table = [(r["recipe"], r["origin"], r["reported"], _accuracy(r), _verdict(r), r["epochs"], _minutes(r),
              f"{r['parameters']:,}", f"{r['test_loss']:.4f}") for r in rows]
    blocks = [("p", _conclusion(rows)),
              ("h2", "Where and on what"), ("table", (("setting", "value"), _where(environment, dates))),
              ("h2", "Every experiment"), ("table", (header, table)), ("image", "accuracies.png"),
              ("p", "Minutes are training and validation time per run (the sum of its epochs). Each run's own "
                    "report (curves, confusion matrix, per-class table) is in <recipe>/seed-<n>/report.html.")]
    by_name = {r["recipe"]: r for r in rows}
    for heading, names, kind in QUESTIONS:
        answered = [by_name[n] for n in names if n in by_name]
        blocks.append(("h2", heading))
        if not answered:
            blocks.append(("p", "Not measured yet: keras-resnet-lab reproduce --only " + " ".join(names)))
            continue
        blocks.append(("table", (("recipe", "model", "parameters", "FLOPs per image (2 per multiply-add)",
                                  "epochs", "test accuracy", "minutes per run"),
                                 [(r["recipe"], r["model_label"], f"{r['parameters']:,}", f"{r['flops_per_image']:,}",
                                   r["epochs"], _accuracy(r), _minutes(r)) for r in answered])))
        blocks.append(("p", CONCLUDE[kind](answered)))
    missing = [r for r in RECIPES.values() if r.name not in by_name]
    if missing:
        blocks += [("h2", "Not in this report"),
                   ("table", (("recipe", "the report's figure", "why"),
                              [(r.name, r.reported, f"needs {NEEDS[r.needs]}" if r.needs else
                                "not run yet: keras-resnet-lab reproduce --only " + r.name) for r in missing]))]
    return _write(folder, "Reproducing the student reports", blocks)[0]
