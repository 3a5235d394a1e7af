"""Figures drawn with matplotlib's Agg canvas directly: the user's backend is never touched."""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .files import atomic_path


def save_figure(figure, path):
    """Saves a matplotlib `Figure` as PNG through the Agg canvas, atomically."""
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")
    return path


SPREAD_FOR_LOG_SCALE = 20  # a loss whose largest value is this many times its smallest is drawn on a log scale


def plot_curves(histories, path, title=None, best_epochs=None):
    """Loss and accuracy against epoch, train (solid) and validation (dashed), one colour per run.

    `histories` maps a label to a history as Keras' `History.history` holds it (a dict of lists,
    as in `TrainResult.history`); `best_epochs` maps a label to the (1-based) epoch whose weights
    the run kept, drawn as a dotted line.
    """
    return save_figure(curves_figure(histories, title, best_epochs), path)


def curves_figure(histories, title=None, best_epochs=None):
    """The `plot_curves` figure. One spike (a diverging epoch) does not flatten the rest: a loss
    spanning more than `SPREAD_FOR_LOG_SCALE` times is drawn on a log scale."""
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 2)
    losses = []
    for index, (label, history) in enumerate(histories.items()):
        color = f"C{index}"
        epochs = np.arange(1, len(history.get("loss", [])) + 1)
        for axis, metric in zip(axes, ("loss", "accuracy")):
            if metric in history:
                axis.plot(epochs, np.asarray(history[metric], float), color=color, label=f"{label} train")
            if f"val_{metric}" in history:
                axis.plot(epochs, np.asarray(history[f"val_{metric}"], float), "--", color=color,
                          label=f"{label} validation")
        losses += [v for key in ("loss", "val_loss") for v in history.get(key, []) if v is not None]
        best = (best_epochs or {}).get(label)
        if best:
            for axis in axes:
                axis.axvline(best, color=color, linestyle=":", linewidth=1, label=f"{label} best epoch ({best})")
    finite = np.asarray([v for v in losses if np.isfinite(v) and v > 0], float)
    if finite.size and finite.max() > SPREAD_FOR_LOG_SCALE * finite.min():
        axes[0].set_yscale("log")
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric + (" (log scale)" if axis.get_yscale() == "log" else ""))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_confusion_matrix(matrix, class_names, path, title="Confusion matrix (test)"):
    """Rows normalized by each true class (the colour is that class's recall, with a colour bar);
    each cell shows its count and its share of the row."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(4.5, 0.5 * len(class_names) + 2.5)
    figure = Figure(figsize=(size + 1, size))
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if len(class_names) <= 20:
        for (i, j), value in np.ndenumerate(matrix):
            if value or i == j:
                axis.text(j, i, f"{value}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=7,
                          color="white" if shares[i, j] > 0.5 else "black")
    return save_figure(figure, path)


def _image_for_display(image):
    image = np.asarray(image, np.float32)
    low, high = float(image.min()), float(image.max())
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image[..., 0] if image.shape[-1] == 1 else image


def plot_samples(images, labels, class_names, path, predictions=None, confidences=None, title=None, columns=8):
    """A grid of images titled with their labels (and predictions with confidence, if given)."""
    count = len(images)
    rows = max(1, int(np.ceil(count / columns)))
    figure = Figure(figsize=(1.6 * min(count, columns), 1.8 * rows))
    axes = np.atleast_1d(figure.subplots(rows, min(count, columns))).ravel()
    for index, axis in enumerate(axes):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(_image_for_display(images[index]), cmap="gray")
        text = f"{class_names[labels[index]]}"
        if predictions is not None:
            text = f"true {text}\npred {class_names[predictions[index]]}"
            if confidences is not None:
                text += f" ({confidences[index]:.2f})"
        axis.set_title(text, fontsize=8)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def plot_mistakes(y_true, y_pred, probabilities, images, class_names, path, count=16):
    """The most confident wrong predictions on the test split."""
    wrong = np.flatnonzero(y_true != y_pred)
    order = wrong[np.argsort(-probabilities[wrong, y_pred[wrong]])][:count]
    if not len(order):
        figure = Figure(figsize=(4, 1))
        figure.text(0.5, 0.5, "No test errors", ha="center", va="center")
        return save_figure(figure, path)
    return plot_samples(images[order], y_true[order], class_names, path, predictions=y_pred[order],
                        confidences=probabilities[order, y_pred[order]], title="Worst test errors")


def default_activation_layers(model, per="stage"):
    """The stem's output and each stage's (or block's) output, by the zoo's layer names."""
    import re

    names = [layer.name for layer in model.layers]
    stem = [n for n in names if n.startswith("stem_")][-1:]
    blocks = [n for n in names if re.fullmatch(r"stage\d+_block\d+_out", n)]
    if per == "stage":
        last = {}
        for name in blocks:
            last[name.split("_")[0]] = name
        blocks = list(last.values())
    if stem or blocks:
        return stem + blocks
    maps = [layer for layer in model.layers if _is_feature_map(layer)]
    activations = [layer.name for layer in maps if layer.__class__.__name__ in ("ReLU", "Activation")]
    return activations or [layer.name for layer in maps if layer.__class__.__name__ == "Conv2D"]


def _is_feature_map(layer):
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # a layer never called symbolically (subclassed models)
        return False


def plot_activations(model, image, layers=None, path=None, max_maps=16, per="stage"):
    """Feature-map grids of `image` after the stem and after each stage (or `layers`).

    Args:
        model: a zoo model (any functional model works with explicit `layers`).
        image: one preprocessed image (H, W, C) as the model receives it.
        layers: layer names; default the stem and each stage's last block (`per="block"`: every
            block).
        path: a folder; one PNG per layer, `activations_<NN>_<layer>.png`, numbered in network
            order (so that a sorted listing, and the report, follow the network). Returns the paths.
    """
    import keras

    layers = layers or default_activation_layers(model, per)
    if not layers or not hasattr(model, "inputs") or not model.inputs:
        return []  # nothing to probe: no feature-map layers, or a subclassed model
    unknown = [name for name in layers if name not in {layer.name for layer in model.layers}]
    if unknown:
        from .errors import ConfigError

        raise ConfigError(f"{model.name} has no layer(s) {unknown}; e.g. {default_activation_layers(model)}.")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [model.get_layer(name).output for name in layers])
    outputs = probe(np.asarray(image, np.float32)[None], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    paths = []
    for number, (name, output) in enumerate(zip(layers, outputs), start=1):
        figure = activation_figure(name, keras.ops.convert_to_numpy(output)[0], image, max_maps)
        paths.append(save_figure(figure, Path(path or ".") / f"activations_{number:02d}_{name}.png"))
    return paths


def activation_figure(name, maps, image, max_maps=16):
    """One layer's feature maps (H, W, C) beside the input: a grid on one colour scale, or, for 1x1
    maps (one value per channel, which a grid would show as identical squares), a bar chart."""
    if maps.shape[0] * maps.shape[1] == 1:
        values = maps[0, 0, :64]
        figure = Figure(figsize=(9, 2.6))
        input_axis, bars = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 5]})
        input_axis.imshow(_image_for_display(image), cmap="gray")
        input_axis.set_title("input", fontsize=8)
        input_axis.axis("off")
        bars.bar(np.arange(len(values)), values, color="C0")
        bars.set_xlabel("channel")
        bars.set_ylabel("activation")
        figure.suptitle(f"{name}: 1x1x{maps.shape[2]}, one value per channel (first {len(values)})")
        return figure
    count = min(maps.shape[-1], max_maps)
    shown = maps[..., :count]
    low, high = float(shown.min()), float(shown.max())
    columns = min(count, 8)
    rows = int(np.ceil(count / columns)) + 1
    figure = Figure(figsize=(1.4 * columns + 0.8, 1.5 * rows))
    axes = np.atleast_2d(figure.subplots(rows, columns))
    for axis in axes.ravel():
        axis.axis("off")
    axes[0, 0].imshow(_image_for_display(image), cmap="gray")
    axes[0, 0].set_title("input", fontsize=8)
    for index in range(count):
        axis = axes[1 + index // columns, index % columns]
        mapped = axis.imshow(shown[..., index], cmap="viridis", vmin=low, vmax=high)
        axis.set_title(f"#{index}", fontsize=7)
    figure.colorbar(mapped, ax=axes[1:].ravel().tolist(), fraction=0.03, pad=0.02, label="activation (one scale)")
    figure.suptitle(f"{name}: {maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]} (first {count} maps)")
    return figure


def plot_seed_accuracies(rows, path, title="Test accuracy: each random seed, and the report's figure"):
    """One line per experiment: a dot per random seed (ours) and a red cross at the report's figure.

    `rows` are (label, [accuracy per seed], reported accuracy or None), accuracies as fractions.
    """
    figure = Figure(figsize=(8, 0.45 * len(rows) + 1.4))
    axis = figure.subplots()
    for y, (label, accuracies, reported) in enumerate(rows):
        axis.scatter(np.asarray(accuracies) * 100, [y] * len(accuracies), color="tab:blue", s=22, zorder=3,
                     label="ours, one dot per seed" if y == 0 else None)
        if reported is not None:
            axis.scatter([reported * 100], [y], color="tab:red", marker="x", s=40, zorder=3,
                         label="the report's figure" if not any(r for _, _, r in rows[:y]) else None)
    axis.set_yticks(range(len(rows)), [label for label, _, _ in rows])
    axis.invert_yaxis()
    axis.set_xlabel("test accuracy (%)")
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(title)
    # Beside the axes, not inside: any corner can hide a seed's dot when accuracies span 75-100%.
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return save_figure(figure, path)
