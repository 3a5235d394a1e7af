"""`reproduce`: the plan, resuming as a whole, and the report written from run folders."""

import json
import subprocess
import sys

import pytest

from keras_resnet_lab.errors import ConfigError
from keras_resnet_lab.training.recipes import RECIPES, get_recipe
from keras_resnet_lab.training.reproduce import (LONG_MINUTES, default_recipes, describe_plan, finished_metrics, plan,
                                              reproduce, run_status)
from keras_resnet_lab.training.reproduce_report import write_reproduction_report


def test_the_plan_runs_every_cpu_recipe_shortest_first_and_long_ones_on_fewer_seeds(tmp_path):
    names = default_recipes()
    assert names and all(RECIPES[n].needs is None for n in names)
    assert "report003-cifar10-resnet18" not in names and "report003-cifar10-finetune" not in names
    assert [RECIPES[n].minutes for n in names] == sorted(RECIPES[n].minutes for n in names)
    runs = plan(["report004-mnist-lenet", "report002-cifar10-resnet20"], seeds=3, long_seeds=1, run_dir=tmp_path)
    assert RECIPES["report002-cifar10-resnet20"].minutes > LONG_MINUTES >= RECIPES["report004-mnist-lenet"].minutes
    assert [(r.recipe, r.seed) for r in runs] == [("report004-mnist-lenet", 0), ("report004-mnist-lenet", 1),
                                                  ("report004-mnist-lenet", 2), ("report002-cifar10-resnet20", 0)]
    assert runs[1].folder == tmp_path / "report004-mnist-lenet" / "seed-1"
    with pytest.raises(ConfigError, match="recipe.*'report004-mnist-lenett'.*report004-mnist-lenet"):
        plan(["report004-mnist-lenett"])
    with pytest.raises(ConfigError, match="seeds=0"):
        plan(["report004-mnist-lenet"], seeds=0)


def fake_run(run, accuracy, parameters, epochs=5, seconds=6.0, **metrics):
    """A finished run folder as `train` leaves it (the files the report reads)."""
    run.folder.mkdir(parents=True)
    config = get_recipe(run.recipe).config(seed=run.seed, run_dir=str(run.folder))
    (run.folder / "config.json").write_text(config.to_json())
    history = [{"epoch": e + 1, "seconds": seconds} for e in range(epochs)]
    (run.folder / "state.json").write_text(json.dumps({"finished": True, "epochs_done": epochs, "history": history}))
    (run.folder / "metrics.json").write_text(json.dumps({
        "split": "test", "accuracy": accuracy, "loss": 0.05, "num_examples": 10000, "epochs_trained": epochs,
        "parameters": {"total": parameters, "trainable": parameters}, "flops_per_image": 1000,
        "environment": {"date": "2026-12-01", "cpu": "Test CPU", "cores": 2, "versions": {"keras": "3.15.1"}},
        **metrics}))


def test_the_report_sets_each_recipe_beside_its_report_and_answers_the_questions(tmp_path):
    runs = plan(["report004-mnist-lenet", "report004-mnist-resnet"], seeds=3, run_dir=tmp_path)
    for run, accuracy in zip(runs, (0.990, 0.992, 0.976, 0.991, 0.993, 0.992)):  # lenet's seed 2 below 97.7%
        fake_run(run, accuracy, 107_786 if run.recipe == "report004-mnist-lenet" else 126_346)
    report = write_reproduction_report(tmp_path, [(run, finished_metrics(run)) for run in runs])
    text = report.read_text()
    assert "2 experiments measured; 1 of the 2 with a report's figure beat it on every random seed; " \
           "not on every seed: report004-mnist-lenet (above on the mean only)." in text
    assert "| report004-mnist-resnet | 004 | 98.7% after 5 epochs (about 99% at best) | 99.20% ± 0.10 (3 seeds: " \
           "99.10% to 99.30%) | above on every seed | 5 | 0.5 | 126,346 | 0.0500 |" in text
    assert "On MNIST the residual mnist_resnet scores 99.20%, 0.60 points ahead of the plain lenet5 (98.60%); the seeds' spread is 0.87 points, so the difference is not much larger than chance" in text
    assert "Test CPU, 2 cores" in text and "| dates | 2026-12-01 to 2026-12-01 (6 runs) |" in text
    assert "depth-cifar10-resnet8" in text  # the unanswered question names its command
    numbers = json.loads((tmp_path / "reproduce.json").read_text())
    assert numbers[0]["accuracies"] == [0.990, 0.992, 0.976] and numbers[0]["beats_every_seed"] is False
    assert all(isinstance(v, (int, float, bool, list, type(None))) or k in ("recipe", "origin", "reported", "model", "model_label")
               for row in numbers for k, v in row.items())  # numbers, not formatted strings
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 1  # the per-seed plot


def test_the_report_keeps_every_finished_run_whichever_command_trained_it(tmp_path):
    lenet = plan(["report004-mnist-lenet"], seeds=5, run_dir=tmp_path)  # seeds 3 and 4 beyond the default
    resnet = plan(["report004-mnist-resnet"], seeds=1, run_dir=tmp_path)[0]
    for run in lenet + [resnet]:
        fake_run(run, 0.99, 107_786 if run in lenet else 126_346)
    (tmp_path / "report004-mnist-resnet" / "seed-x").mkdir()  # not a run folder: ignored
    report = reproduce(["report004-mnist-resnet"], seeds=1, run_dir=tmp_path, train=False)
    text = report.read_text()
    assert "| report004-mnist-lenet | 004 |" in text and "(5 seeds: 99.00% to 99.00%)" in text
    assert "| report004-mnist-resnet | 004 |" in text and "(1 seed)" in text


def test_the_report_gives_the_figure_without_test_time_flips_too(tmp_path):
    run = plan(["report002-cifar10-resnet20"], seeds=1, run_dir=tmp_path)[0]
    fake_run(run, 0.8724, 272_474, test_time_flip=True, without_test_time_flip={"accuracy": 0.858})
    text = write_reproduction_report(tmp_path, [(run, finished_metrics(run))]).read_text()
    assert "87.24% (1 seed) with test-time flips (85.80% without) | above on every seed" in text


def test_a_run_of_an_edited_recipe_is_not_taken_as_finished(tmp_path):
    run = plan(["report004-mnist-lenet"], seeds=1, run_dir=tmp_path)[0]
    fake_run(run, 0.99, 107_786)
    assert finished_metrics(run)["accuracy"] == 0.99
    saved = json.loads((run.folder / "config.json").read_text())
    (run.folder / "config.json").write_text(json.dumps({**saved, "epochs": 7}))
    assert finished_metrics(run) is None
    older = {key: value for key, value in saved.items() if key != "test_time_flip"}  # written before the setting
    (run.folder / "config.json").write_text(json.dumps(older))
    assert finished_metrics(run)["accuracy"] == 0.99  # missing: its default, False, as the recipe says
    (run.folder / "config.json").write_text(json.dumps({**saved, "test_time_flip": True}))
    assert finished_metrics(run) is None  # evaluated otherwise than the recipe says


def test_old_recipe_names_still_work():
    assert get_recipe("seed004-mnist-lenet") is get_recipe("report004-mnist-lenet")
    assert plan(["seed004-mnist-lenet"], seeds=1)[0].recipe == "report004-mnist-lenet"


@pytest.mark.slow
def test_reproduce_trains_each_seed_once_and_resumes_as_a_whole(tmp_path, digits_data_dir=None):
    command = [sys.executable, "-m", "keras_resnet_lab", "reproduce", "--only", "digits-baseline-cnn", "--seeds", "2",
               "--run-dir", str(tmp_path), "--quiet"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Run 2 of 2: digits-baseline-cnn, seed 1 ->" in first.stdout
    models = [tmp_path / "digits-baseline-cnn" / f"seed-{s}" / "model.keras" for s in (0, 1)]
    stamps = [m.stat().st_mtime_ns for m in models]
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and second.stdout.count(": done (test accuracy") == 2
    assert [m.stat().st_mtime_ns for m in models] == stamps  # nothing trained again
    assert "digits-baseline-cnn | main job | - | " in (tmp_path / "report.md").read_text()


def test_the_headline_of_a_report_with_no_reports_figure_says_so(tmp_path):
    runs = plan(["depth-cifar10-resnet8"], seeds=1, run_dir=tmp_path)
    fake_run(runs[0], 0.76, 75_290)
    text = write_reproduction_report(tmp_path, [(runs[0], finished_metrics(runs[0]))]).read_text()
    assert "1 experiment measured; none has a report's figure to compare with" in text
    assert "0 of the 0" not in text


def test_the_list_says_which_runs_are_done_which_resume_and_the_minutes_left(tmp_path):
    runs = plan(["report004-mnist-lenet"], seeds=3, run_dir=tmp_path)
    fake_run(runs[0], 0.9912, 107_786)
    runs[1].folder.mkdir(parents=True)  # interrupted after 2 of its 5 epochs
    (runs[1].folder / "state.json").write_text(json.dumps({"finished": False, "epochs_done": 2}))
    lines = describe_plan(runs).splitlines()
    assert lines[0].endswith("seed-0: done (test accuracy 0.9912)")
    assert lines[1].endswith("seed-1: resumes after epoch 2 of 5") and lines[2].endswith("seed-2: to train")
    minutes = get_recipe("report004-mnist-lenet").minutes * (3 / 5 + 1)
    assert lines[3].startswith(f"1 of 3 runs done; about {minutes:.0f} minutes of training left")
    saved = json.loads((runs[0].folder / "config.json").read_text())
    (runs[0].folder / "config.json").write_text(json.dumps({**saved, "epochs": 7}))  # an edited recipe
    assert run_status(runs[0]).text.startswith("holds a run with other settings")
