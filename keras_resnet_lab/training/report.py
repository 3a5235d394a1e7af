"""A run's plots and report pages (Markdown, and HTML with every image embedded), and a comparison's.

Every figure skips what does not apply to the model or data: activation grids need a model
whose feature maps can be probed, sample grids need the images in memory.
"""

import base64
import html
import json
from pathlib import Path

from ..files import markdown_table, write_text_atomic
from ..models import model_label
from ..plots import plot_activations, plot_confusion_matrix, plot_curves, plot_mistakes, plot_samples
from .run_folder import PLOTS, REPORT_HTML, REPORT_MD

METRIC_ROWS = (
    ("loss", "loss", "{:.4f}"), ("accuracy", "accuracy", "{:.4f}"), ("macro precision", "precision_macro", "{:.4f}"),
    ("macro recall", "recall_macro", "{:.4f}"), ("macro F1", "f1_macro", "{:.4f}"),
    ("epochs trained", "epochs_trained", "{}"), ("best epoch (validation)", "best_epoch", "{}"),
    ("seconds per epoch", "seconds_per_epoch", "{:.2f}"),
    ("trainable parameters", "trainable_parameters", "{:,}"), ("FLOPs per image (2 per multiply-add)", "flops_per_image", "{:,}"),
)


def _count(number, noun):
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _fmt(template, value):
    return "-" if value is None else template.format(value)


def _html(title, markdown_blocks, folder):
    """A self-contained page: tables as HTML, images inline as base64 PNG."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%}pre{background:#f6f6f6;padding:8px}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for kind, content in markdown_blocks:
        if kind == "h2":
            parts.append(f"<h2>{html.escape(content)}</h2>")
        elif kind == "table":
            header, rows = content
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                         + "</table>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(content)}</pre>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(content)}</p>")
        elif kind == "image":
            data = base64.b64encode((folder / content).read_bytes()).decode()
            parts.append(f"<p><img alt='{html.escape(content)}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(parts)


def _write(folder, title, blocks):
    markdown = [f"# {title}"]
    for kind, content in blocks:
        if kind == "h2":
            markdown.append(f"\n## {content}")
        elif kind == "table":
            markdown.append(markdown_table(*content))
        elif kind == "pre":
            markdown.append(f"```\n{content}\n```")
        elif kind == "p":
            markdown.append(content)
        elif kind == "image":
            markdown.append(f"![{content}]({content})")
    write_text_atomic(folder / REPORT_MD, "\n\n".join(markdown) + "\n")
    write_text_atomic(folder / REPORT_HTML, _html(title, blocks, folder))
    return folder / REPORT_MD, folder / REPORT_HTML


def _images(folder, pattern):
    return [p.relative_to(folder).as_posix() for p in sorted(folder.glob(pattern))]


def run_summary(result):
    metrics = result.metrics
    seconds = result.history.get("seconds", [])
    return {
        **{k: metrics.get(k) for k in ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "epochs_trained",
                                       "best_epoch", "flops_per_image")},
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "trainable_parameters": metrics.get("parameters", {}).get("trainable"),
    }


def environment_rows(environment, split_sizes=None):
    """(setting, value) rows: when, with what and on what a run was measured, and its split sizes."""
    env = environment or {}
    versions = ", ".join(f"{name} {version}" for name, version in env.get("versions", {}).items())
    isa = " ".join(env.get("isa", []))
    rows = [("date", env.get("date", "-")), ("versions", versions or "-"), ("backend", env.get("backend") or "-"),
            ("CPU", f"{env.get('cpu', '-')}, {env.get('cores', '-')} cores ({isa})"),
            ("devices", ", ".join(env.get("devices") or []) or "-")]
    sizes = split_sizes or {}
    rows.append(("examples (train / validation / test)",
                 " / ".join(_fmt("{:,}", sizes.get(split)) for split in ("train", "validation", "test"))))
    return rows


def per_class_rows(metrics):
    """(class, precision, recall, F1, support) rows from the metrics' per-class report."""
    per_class = metrics.get("per_class", {})
    skip = {"accuracy", "macro avg", "weighted avg", "micro avg"}
    return [(name, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1-score']:.4f}", int(v["support"]))
            for name, v in per_class.items() if name not in skip]


def most_confused(metrics, class_names):
    """(true class, predicted class, count, images of the true class) of the commonest mistake, or None."""
    matrix = metrics.get("confusion_matrix") or []
    best = None
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if i != j and count and (best is None or count > best[2]):
                best = (class_names[i], class_names[j], count, sum(row))
    return best


def run_conclusion(result, class_names):
    """One paragraph, generated from the numbers: what the run reached, which epoch it kept and why,
    its commonest mistake and its weakest class."""
    m, config = result.metrics, result.config
    text = (f"{model_label(config.model, config.model_options)} reached {m['accuracy']:.2%} {m['split']} accuracy "
            f"(macro F1 {m['f1_macro']:.4f}, loss {m['loss']:.4f}) after {_count(m.get('epochs_trained'), 'epoch')}")
    if m.get("best_epoch"):
        text += f"; the weights kept are those of epoch {m['best_epoch']}, chosen by {config.monitor}"
    text += "."
    if m.get("test_time_flip"):
        text += (f" Each {m['split']} image's logits are averaged with its mirror image's; the model alone "
                 f"scores {m['without_test_time_flip']['accuracy']:.2%}.")
    confused = most_confused(m, [str(c) for c in class_names])
    if confused:
        true, predicted, count, total = confused
        text += f" Its commonest mistake is '{true}' taken for '{predicted}' ({count} of {total} images)."
    rows = per_class_rows(m)
    if rows:
        weakest = min(rows, key=lambda row: float(row[3]))
        text += f" Its weakest class is '{weakest[0]}' (F1 {weakest[3]})."
    return text


def run_title(config):
    """"depth-cifar10-resnet32: cifar_resnet (depth=32) on cifar10", without the recipe if none."""
    title = f"{model_label(config.model, config.model_options)} on {config.dataset}"
    return f"{config.recipe}: {title}" if config.recipe else title


def draw_run_plots(folder, result, bundle, predictions):
    """Curves, the confusion matrix, test samples, the worst errors and activation grids."""
    plots = folder / PLOTS
    config = result.config
    plot_curves({config.model: result.history}, plots / "curves.png", title=run_title(config),
                best_epochs={config.model: result.metrics.get("best_epoch")})
    plot_confusion_matrix(result.metrics["confusion_matrix"], bundle.class_names, plots / "confusion_matrix.png",
                          title=f"Confusion matrix ({result.metrics['split']})")
    y_true, y_pred, probabilities = predictions
    split = result.metrics["split"]
    if bundle.arrays is not None and split in bundle.arrays:
        images, labels = bundle.arrays[split]
        plot_samples(images[:16], labels[:16], bundle.class_names, plots / "samples.png", title=f"{split} samples")
        plot_mistakes(y_true, y_pred, probabilities, images, bundle.class_names, plots / "mistakes.png")
    first_batch = next(iter(bundle.test if bundle.test is not None else bundle.validation))[0]
    plot_activations(result.model, first_batch[0].numpy(), path=plots / "activations")


def write_run_report(folder, result, bundle, predictions):
    """The run's plots, then `report.md` and `report.html` in `folder` (the run's folder path):
    metrics, every plot, the configuration."""
    draw_run_plots(folder, result, bundle, predictions)
    summary = run_summary(result)
    metrics = result.metrics
    blocks = [
        ("p", run_conclusion(result, bundle.class_names)),
        ("h2", "Where and on what"),
        ("table", (("setting", "value"), environment_rows(metrics.get("environment"), metrics.get("split_sizes")))),
        ("h2", f"Metrics ({result.metrics['split']} split)"),
        ("table", (("metric", "value"), [(label, _fmt(t, summary.get(key))) for label, key, t in METRIC_ROWS])),
        ("h2", f"Per class ({metrics['split']} split)"),
        ("table", (("class", "precision", "recall", "F1", "images"), per_class_rows(metrics))),
        ("h2", "Curves"), *[("image", p) for p in _images(folder, "plots/curves.png")],
        ("h2", "Confusion matrix"), *[("image", p) for p in _images(folder, "plots/confusion_matrix.png")],
        ("h2", "Samples and worst errors"),
        *[("image", p) for p in _images(folder, "plots/samples.png") + _images(folder, "plots/mistakes.png")],
        ("h2", "Activations"), *[("image", p) for p in _images(folder, "plots/activations/*.png")],
        ("h2", "Configuration"), ("pre", result.config.to_json()),
    ]
    return _write(folder, run_title(result.config), blocks)


def comparison_conclusion(results, names):
    """One paragraph from the numbers: the model chosen on validation data, how it does on the test
    split, and what the smallest model gives up against it."""
    scored = [(max(r.history.get("val_accuracy") or [float("nan")]), name, r) for name, r in zip(names, results)]
    scored = [item for item in scored if item[0] == item[0]]
    if not scored:
        return "No run has validation accuracy, so none is chosen."
    validation, name, best = max(scored, key=lambda item: item[0])
    split = best.metrics["split"]
    text = (f"Chosen on validation accuracy ({validation:.2%}): {name}. On the {split} split, read once at the "
            f"end, it scores {best.metrics['accuracy']:.2%}.")
    small_name, small = min(zip(names, results), key=lambda item: run_summary(item[1])["trainable_parameters"] or 0)
    best_size, small_size = run_summary(best)["trainable_parameters"], run_summary(small)["trainable_parameters"]
    if small is not best and best_size and small_size:
        gap = (best.metrics["accuracy"] - small.metrics["accuracy"]) * 100
        text += (f" The smallest, {small_name} ({small_size:,} trainable parameters, {best_size / small_size:,.0f}x "
                 f"fewer), scores {small.metrics['accuracy']:.2%} ({abs(gap):.2f} points "
                 f"{'below' if gap >= 0 else 'above'}).")
    return text


def write_comparison_report(folder, results, names):
    """One row per model (parameters, FLOPs, accuracy, F1, seconds per epoch), curves, and
    each run's confusion matrix and activation grids."""
    folder = Path(folder)
    header = ("run", "model", "trainable parameters", "FLOPs per image (2 per multiply-add)", "epochs", "seconds per epoch",
              "test accuracy", "macro F1")
    rows = []
    for name, result in zip(names, results):
        s = run_summary(result)
        rows.append((name, result.config.model, _fmt("{:,}", s["trainable_parameters"]), _fmt("{:,}", s["flops_per_image"]),
                     _fmt("{}", s["epochs_trained"]), _fmt("{:.2f}", s["seconds_per_epoch"]),
                     _fmt("{:.4f}", s["accuracy"]), _fmt("{:.4f}", s["f1_macro"])))
    environment = results[0].metrics.get("environment") if results else None
    blocks = [("p", comparison_conclusion(results, names)),
              ("h2", "Where and on what"), ("table", (("setting", "value"), environment_rows(
                  environment, results[0].metrics.get("split_sizes") if results else None))),
              ("h2", "Models side by side"), ("table", (header, rows)),
              ("h2", "Curves"), *[("image", p) for p in _images(folder, "comparison_curves.png")]]
    for name in names:
        blocks += [("h2", name), *[("image", p) for p in _images(folder, f"{name}/plots/confusion_matrix.png")],
                   *[("image", p) for p in _images(folder, f"{name}/plots/activations/*.png")]]
    numbers = [{"run": name, "model": result.config.model, **run_summary(result)} for name, result in zip(names, results)]
    write_text_atomic(folder / "comparison.json", json.dumps(numbers, indent=1))
    return _write(folder, "Model comparison", blocks)
