"""Report pages (Markdown, and HTML with every image embedded) for a run and a comparison."""

import base64
import html
import json
from pathlib import Path

from .training.run_state import write_atomic

METRIC_ROWS = (
    ("test accuracy", "accuracy", "{:.4f}"), ("macro precision", "precision_macro", "{:.4f}"),
    ("macro recall", "recall_macro", "{:.4f}"), ("macro F1", "f1_macro", "{:.4f}"),
    ("epochs trained", "epochs_trained", "{}"), ("best epoch (validation)", "best_epoch", "{}"),
    ("seconds per epoch", "seconds_per_epoch", "{:.2f}"),
    ("trainable parameters", "trainable_parameters", "{:,}"), ("FLOPs per image", "flops_per_image", "{:,}"),
)


def _markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


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
            markdown.append(_markdown_table(*content))
        elif kind == "pre":
            markdown.append(f"```\n{content}\n```")
        elif kind == "image":
            markdown.append(f"![{content}]({content})")
    write_atomic(folder / "report.md", "\n\n".join(markdown) + "\n")
    write_atomic(folder / "report.html", _html(title, blocks, folder))
    return folder / "report.md", folder / "report.html"


def _images(folder, pattern):
    return [p.relative_to(folder).as_posix() for p in sorted(folder.glob(pattern))]


def run_summary(result):
    metrics = result.metrics
    seconds = [row["seconds"] for row in result.history if "seconds" in row]
    return {
        **{k: metrics.get(k) for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "epochs_trained",
                                       "best_epoch", "flops_per_image")},
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "trainable_parameters": metrics.get("parameters", {}).get("trainable"),
    }


def write_run_report(result):
    """`report.md` and `report.html` in the run folder: config, metrics, every plot."""
    folder = Path(result.run_dir)
    summary = run_summary(result)
    blocks = [
        ("h2", "Metrics (test split)"),
        ("table", (("metric", "value"), [(label, _fmt(t, summary.get(key))) for label, key, t in METRIC_ROWS])),
        ("h2", "Curves"), *[("image", p) for p in _images(folder, "plots/curves.png")],
        ("h2", "Confusion matrix"), *[("image", p) for p in _images(folder, "plots/confusion_matrix.png")],
        ("h2", "Samples and worst errors"),
        *[("image", p) for p in _images(folder, "plots/samples.png") + _images(folder, "plots/mistakes.png")],
        ("h2", "Activations"), *[("image", p) for p in _images(folder, "plots/activations/*.png")],
        ("h2", "Configuration"), ("pre", result.config.to_json()),
    ]
    return _write(folder, f"{result.config.model} on {result.config.dataset}", blocks)


def write_comparison_report(folder, results, names):
    """One row per model (parameters, FLOPs, accuracy, F1, seconds per epoch), curves, and
    each run's confusion matrix and activation grids."""
    folder = Path(folder)
    header = ("run", "model", "trainable parameters", "FLOPs per image", "epochs", "seconds per epoch",
              "test accuracy", "macro F1")
    rows = []
    for name, result in zip(names, results):
        s = run_summary(result)
        rows.append((name, result.config.model, _fmt("{:,}", s["trainable_parameters"]), _fmt("{:,}", s["flops_per_image"]),
                     _fmt("{}", s["epochs_trained"]), _fmt("{:.2f}", s["seconds_per_epoch"]),
                     _fmt("{:.4f}", s["accuracy"]), _fmt("{:.4f}", s["f1_macro"])))
    blocks = [("h2", "Models side by side"), ("table", (header, rows)),
              ("h2", "Curves"), *[("image", p) for p in _images(folder, "comparison_curves.png")]]
    for name in names:
        blocks += [("h2", name), *[("image", p) for p in _images(folder, f"{name}/plots/confusion_matrix.png")],
                   *[("image", p) for p in _images(folder, f"{name}/plots/activations/*.png")]]
    write_atomic(folder / "comparison.json", json.dumps([dict(zip(header, r)) for r in rows], indent=1))
    return _write(folder, "Model comparison", blocks)
