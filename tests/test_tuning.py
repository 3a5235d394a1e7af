import json
import os
import socket
import subprocess
import sys

import keras_tuner as kt
import pytest

import keras_resnet_lab as lab
from keras_resnet_lab.tuning import LabHyperModel, TuneConfig, default_search_space, define_hyperparameter, tune

TINY = """
tuner = "random"
max_trials = {trials}
max_epochs = 1
directory = "{directory}"
[train]
model = "mnist_resnet"
dataset = "{dataset}"
epochs = 1
steps_per_execution = 4
verbose = "quiet"
{extra}
[search_space]
learning_rate = {{ min = 1e-3, max = 1e-2, sampling = "log" }}
"model_options.num_blocks.stage1" = {{ min = 0, max = 2 }}
"model_options.num_blocks.stage2" = 1
"""


def write_search(tmp_path, trials=2, dataset="digits", extra=""):
    path = tmp_path / "search.toml"
    path.write_text(TINY.format(trials=trials, directory=tmp_path / "tuning", dataset=dataset, extra=extra))
    return path


def test_default_spaces_and_fixed_overrides(tmp_path):
    space = default_search_space("mnist_resnet")
    assert space["learning_rate"]["sampling"] == "log"
    assert {"model_options.num_blocks.stage1", "model_options.num_blocks.stage2"} <= set(space)
    assert "model_options.depth" in default_search_space("cifar_resnet20")
    hp = kt.HyperParameters()
    assert define_hyperparameter(hp, "learning_rate", 0.025) == 0.025  # a plain value is hp.Fixed
    assert define_hyperparameter(hp, "optimizer", ["adam", "sgd"]) == "adam"
    assert define_hyperparameter(hp, "n", {"min": 1, "max": 3}) == 1
    assert isinstance(hp._hps["learning_rate"][0], kt.engine.hyperparameters.Fixed)
    bundle = lab.load_dataset("digits", validation_split=0.1)
    model = LabHyperModel(lab.TrainConfig(model="mnist_resnet"), {"model_options.num_blocks.stage1": 3,
                                                                   "model_options.num_blocks.stage2": 0},
                          bundle, timings_path=tmp_path / "timings.json")
    built = model.build(kt.HyperParameters())
    names = [layer.name for layer in built.layers]
    assert "stage1_block3_add" in names and "stage2_block1_add" not in names
    assert built.optimizer is not None  # compiled as train would
    with pytest.raises(ValueError, match="min 3 is above max 1"):
        define_hyperparameter(kt.HyperParameters(), "x", {"min": 3, "max": 1})


def test_tiny_search_on_real_mnist_and_the_best_config_trains(data_dir, tmp_path):
    path = write_search(tmp_path, dataset="mnist", extra="dataset_options = { train_subset_per_class = 20 }")
    config = TuneConfig.from_file(path)
    config.train = config.train.replace(data_dir=str(data_dir))
    result = tune(config=config)
    project = tmp_path / "tuning" / "search"
    for name in ("leaderboard.csv", "leaderboard.md", "best.toml", "objective_vs_learning_rate.png",
                 "objective_vs_num_blocks.png", "oracle.json"):
        assert (project / name).is_file(), name
    assert len(result.leaderboard) == 2 and all(r["status"] == "COMPLETED" for r in result.leaderboard)
    assert result.leaderboard[0]["score"] >= result.leaderboard[1]["score"]
    assert all(r["seconds"] and r["epochs"] == 1 for r in result.leaderboard)
    assert result.best_model.count_params() > 0  # reloads under Keras 3
    best = lab.TrainConfig.from_file(project / "best.toml")
    assert best.learning_rate == pytest.approx(result.best_hyperparameters["learning_rate"])
    assert best.model_options["num_blocks"][1] == 1
    trained = lab.train(best.replace(run_dir=str(tmp_path / "best"), data_dir=str(data_dir)))
    assert trained.metrics["num_examples"] == 10000


def test_a_corrupt_trial_file_is_named(tmp_path):
    path = write_search(tmp_path, trials=1)
    tune(config=TuneConfig.from_file(path))
    trial = tmp_path / "tuning" / "search" / "trial_0" / "trial.json"
    trial.write_text(trial.read_text()[:40])
    with pytest.raises(lab.LabError, match=r"trial_0/trial.json is corrupt or half-written.*delete"):
        tune(config=TuneConfig.from_file(path))


KILL_SCRIPT = """
import os, sys
import keras_resnet_lab.tuning as tuning
from keras_resnet_lab.tuning import TuneConfig, tune

original = tuning.LabHyperModel.fit
calls = []

def fit(self, hp, model, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2 and os.environ.get("DIE"):
        os._exit(3)  # killed during the second trial
    return original(self, hp, model, *args, **kwargs)

tuning.LabHyperModel.fit = fit
result = tune(config=TuneConfig.from_file(sys.argv[1]))
print("TRIALS", sorted(r["trial"] for r in result.leaderboard), "FITS", len(calls))
"""


@pytest.mark.slow
def test_a_killed_search_resumes_without_redoing_finished_trials(tmp_path):
    path = write_search(tmp_path, trials=3)
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    killed = subprocess.run([sys.executable, str(script), str(path)], env={**os.environ, "DIE": "1"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 3, killed.stderr[-2000:]
    first = (tmp_path / "tuning" / "search" / "trial_0" / "trial.json").read_text()
    assert json.loads(first)["status"] == "COMPLETED"
    resumed = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "TRIALS ['0', '1', '2'] FITS 2" in resumed.stdout  # trial 1 reran, trial 2 ran, trial 0 did not
    assert (tmp_path / "tuning" / "search" / "trial_0" / "trial.json").read_text() == first


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_localhost_search_with_a_chief_and_two_workers(tmp_path):
    path = write_search(tmp_path, trials=3)
    oracle = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "keras_resnet_lab.cli", "tune", "--config", str(path), "--oracle", oracle]
    chief = subprocess.Popen([*command, "--role", "chief"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers = [subprocess.Popen([*command, "--role", f"worker{i}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=400)[0] for p in workers]
        chief_output = chief.communicate(timeout=120)[0]
    finally:
        for process in (chief, *workers):
            process.kill()
    assert chief.returncode == 0, chief_output[-2000:]
    assert all(p.returncode == 0 for p in workers), [o[-1500:] for o in outputs]
    trials = sorted((tmp_path / "tuning" / "search").glob("trial_*/trial.json"))
    assert len(trials) == 3
    assert all(json.loads(t.read_text())["status"] == "COMPLETED" for t in trials)
    ran_by = {json.loads((tmp_path / "tuning" / "search" / f"worker{i}.json").read_text()) is not None for i in range(2)}
    assert ran_by == {True}
    assert chief_output.count("COMPLETED") == 3


def test_hyperband_runs_exactly_max_trials(tmp_path):
    path = write_search(tmp_path, trials=3)
    config = TuneConfig.from_file(path)
    config.tuner, config.max_epochs = "hyperband", 2  # one bracket alone would hold only 2 trials
    result = tune(config=config)
    assert len(result.leaderboard) == 3 and all(r["status"] == "COMPLETED" for r in result.leaderboard)


def test_every_setting_means_in_a_trial_what_it_means_in_train(tmp_path, monkeypatch):
    """Label smoothing, mixed precision, trainable_last and the plateau schedule in a search: every
    trial completes, and a trial's learning rates per epoch equal `train`'s for the same settings."""
    trial_histories = []
    original = LabHyperModel.fit
    monkeypatch.setattr(LabHyperModel, "fit", lambda *a, **k: trial_histories.append(original(*a, **k)) or trial_histories[-1])
    settings = dict(model="mnist_resnet", dataset="digits", epochs=2, batch_size=64, steps_per_execution=4,
                    label_smoothing=0.1, mixed_precision=True, trainable_last=3, schedule="plateau",
                    learning_rate=0.01, step_gamma=0.5, early_stopping_patience=5, verbose="quiet")
    onecycle = dict(settings, schedule="onecycle", label_smoothing=0.0, mixed_precision=False, trainable_last=None)
    for name, case in (("every", settings), ("onecycle", onecycle)):
        result = tune(search_space={"learning_rate": [0.01]}, tuner="random", max_trials=1, max_epochs=2,
                      directory=str(tmp_path / "tuning"), project_name=name, **case)
        assert [r["status"] for r in result.leaderboard] == ["COMPLETED"]
        trained = lab.train(**case, run_dir=str(tmp_path / name), reports=False)
        assert trial_histories[-1].history["learning_rate"] == pytest.approx(trained.history["learning_rate"])
    assert trained.history["learning_rate"][0] != trained.history["learning_rate"][1]  # one-cycle moves
    frozen = lab.train(**settings, run_dir=str(tmp_path / "every"), reports=False).model
    assert frozen.get_layer("stage1_block1_conv1").trainable is False  # frozen as in the trial


@pytest.mark.parametrize("space,match", [
    ({"optimizer": ["adam", "lion"]}, "'optimizer'.*'lion'.*Unknown optimizer"),
    ({"model_options.num_block": [1, 2]}, "has no option 'num_block'"),
])
def test_a_search_space_value_that_train_would_refuse_is_refused_before_the_search(tmp_path, space, match):
    with pytest.raises(lab.ConfigError, match=match):
        tune("mnist_resnet", "digits", search_space=space, tuner="random", max_trials=1, max_epochs=1,
             directory=str(tmp_path / "tuning"))
    assert not (tmp_path / "tuning").exists()


def test_a_mistyped_objective_is_refused_before_any_trial(tmp_path):
    with pytest.raises(lab.ConfigError, match="Unknown objective 'val_acc'.*'val_accuracy'"):
        tune("mnist_resnet", "digits", objective="val_acc", tuner="random", max_trials=1, max_epochs=1,
             directory=str(tmp_path / "tuning"))
