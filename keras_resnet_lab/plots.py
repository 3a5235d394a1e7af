"""Figures drawn with matplotlib's Agg canvas directly: the user's backend is never touched."""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(figure, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    tmp = path.with_name(f".tmp-{path.name}")
    figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_curves(histories, path, title=None):
    """Loss and accuracy against epoch, train (solid) and validation (dashed), one colour per run.

    `histories` maps a label to a list of per-epoch rows (`TrainResult.history`).
    """
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 2)
    for index, (label, rows) in enumerate(histories.items()):
        color = f"C{index}"
        epochs = [row["epoch"] for row in rows]
        for axis, metric in zip(axes, ("loss", "accuracy")):
            axis.plot(epochs, [row.get(metric, np.nan) for row in rows], color=color, label=f"{label} train")
            if any(f"val_{metric}" in row for row in rows):
                axis.plot(epochs, [row.get(f"val_{metric}", np.nan) for row in rows], "--", color=color,
                          label=f"{label} validation")
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_confusion_matrix(matrix, class_names, path, title="Confusion matrix (test)"):
    matrix = np.asarray(matrix)
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure = Figure(figsize=(size, size))
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if len(class_names) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(j, i, str(value), ha="center", va="center", fontsize=7,
                      color="white" if value > threshold else "black")
    return _save(figure, path)
