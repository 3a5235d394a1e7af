"""`compare`: several models trained one after another on one dataset, side by side."""

import dataclasses
import gc
from pathlib import Path

import keras

from ..files import markdown_table, write_text_atomic
from ..plots import plot_curves
from .config import TrainConfig
from .recipes import get_recipe
from .report import write_comparison_report
from .train import check_config, train

COLUMNS = ("model", "parameters", "epochs", "seconds_per_epoch", "test_accuracy", "test_f1_macro")


@dataclasses.dataclass
class CompareResult:
    """The `TrainResult` of each run, the table's rows, and the folder holding the comparison."""

    results: list
    rows: list
    run_dir: Path

    def table(self):
        return format_table(self.rows)


def format_table(rows, columns=COLUMNS):
    def cell(column, value):
        if isinstance(value, float):
            return f"{value:.4f}" if column.startswith("test_") else f"{value:.2f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    return markdown_table(columns, [[cell(c, row.get(c)) for c in columns] for row in rows])


def configs_for(models=None, dataset=None, recipes=None, **settings):
    """TrainConfigs for `recipes` (names) and for each of `models` on `dataset`."""
    configs = [get_recipe(name).config(**settings) for name in recipes or ()]
    configs += [TrainConfig.from_dict({**settings, "model": m, "dataset": dataset}) for m in models or ()]
    return configs


def compare(configs, run_dir="runs/compare", **settings):
    """Trains each `TrainConfig` in turn (each in `run_dir/<name>`) and tabulates the results.

    Memory is released between models (`keras.backend.clear_session()`), so a long list of
    models does not accumulate memory as report 001's loop did.

    Example:
        >>> result = compare(configs_for(models=["baseline_cnn", "lenet5"], dataset="mnist", epochs=3))
        >>> print(result.table())
    """
    run_dir = Path(run_dir)
    configs = [config.replace(run_dir=str(run_dir / (config.recipe or config.model)), **settings) for config in configs]
    for config in configs:  # every model, option and setting is checked before the first model trains
        check_config(config)
    results, rows = [], []
    for index, config in enumerate(configs, start=1):
        name = config.recipe or config.model
        if config.verbose != "quiet":
            print(f"Model {index} of {len(configs)}: {name}", flush=True)
        keras.backend.clear_session()
        gc.collect()
        result = train(config)
        rows.append({**result.summary_row(), "run": name})
        result.model = None  # keep only the figures: models are reloadable from each run folder
        results.append(result)
    write_text_atomic(run_dir / "comparison.md", format_table(rows) + "\n")
    plot_curves({row["run"]: r.history for row, r in zip(rows, results)}, run_dir / "comparison_curves.png",
                title="Model comparison", best_epochs={row["run"]: r.metrics.get("best_epoch") for row, r in zip(rows, results)})
    write_comparison_report(run_dir, results, [row["run"] for row in rows])
    return CompareResult(results, rows, run_dir)
