import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import keras

import keras_resnet_lab as lab
from keras_resnet_lab.cli import main
from keras_resnet_lab.training.schedules import PhasedSchedule

QUICK = dict(verbose="quiet", steps_per_execution=4, reports=False)


def tiny(tmp_path, **settings):
    """A 1-epoch mnist_resnet run on the digits: seconds, not minutes."""
    defaults = dict(model="mnist_resnet", dataset="digits", epochs=1, run_dir=str(tmp_path / "run"),
                    model_options={"num_blocks": 1}, **QUICK)
    return {**defaults, **settings}


def test_few_steps_on_real_mnist(data_dir, tmp_path):
    result = lab.train("baseline_cnn", "mnist", data_dir=str(data_dir), epochs=2, batch_size=32, learning_rate=3e-3,
                       dataset_options={"train_subset_per_class": 100}, run_dir=str(tmp_path / "m"), **QUICK)
    assert result.metrics["num_examples"] == 10000
    assert result.metrics["accuracy"] > 0.5  # 900 examples, 2 epochs: far above chance (0.1)
    assert len(result.history["loss"]) == 2


def test_digits_run_folder_holds_every_artifact(tmp_path):
    result = lab.train(lab.TrainConfig(**tiny(tmp_path, epochs=2, reports=True)))
    run = result.run_dir
    for name in ["config.json", "identity.json", "state.json", "history.csv", "metrics.json", "model.keras",
                 "plots/curves.png", "plots/confusion_matrix.png"]:
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").rglob("events.out.tfevents*"))
    state = json.loads((run / "state.json").read_text())
    assert (run / state["best_checkpoint"]).is_file() and (run / state["checkpoint"]).is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class", "confusion_matrix"}
    assert np.asarray(metrics["confusion_matrix"]).sum() == 360
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"}
    assert all(len(values) == 2 for values in result.history.values())  # Keras' History.history shape
    assert (run / "history.csv").read_text().count("\n") == 3


def test_a_finished_run_is_loaded_not_retrained(tmp_path, capsys):
    first = lab.train(**tiny(tmp_path))
    again = lab.train(**{**tiny(tmp_path), "verbose": "line"})
    assert "already trained" in capsys.readouterr().out
    assert again.metrics == first.metrics and len(again.history["loss"]) == 1


def test_other_settings_in_the_same_run_dir_are_refused(tmp_path):
    lab.train(**tiny(tmp_path))
    with pytest.raises(ValueError, match="another run.*learning_rate: 0.001 -> 0.5.*overwrite"):
        lab.train(**tiny(tmp_path, learning_rate=0.5))
    assert lab.train(**tiny(tmp_path, learning_rate=0.5, overwrite=True)).config.learning_rate == 0.5


def test_phases_set_learning_rate_and_batch_size(tmp_path):
    phases = [{"epochs": 1, "learning_rate": 0.002, "batch_size": 32}, {"epochs": 1, "learning_rate": 0.0005, "batch_size": 64}]
    result = lab.train(**tiny(tmp_path, epochs=2, phases=phases, validation_split=0.0))
    assert result.history["learning_rate"] == pytest.approx([0.002, 0.0005])
    steps = int(np.ceil(1437 / 32)) + int(np.ceil(1437 / 64))
    assert int(result.model.optimizer.iterations) == steps


def test_schedules_give_the_learning_rates_they_promise():
    def lr(schedule, step):
        return float(schedule(step))

    constant = PhasedSchedule([(0, 10, 0.002), (10, 10, 0.0005)])
    assert lr(constant, 9) == pytest.approx(0.002) and lr(constant, 10) == pytest.approx(0.0005)
    cosine = PhasedSchedule([(0, 100, 0.1)], "cosine", warmup_steps=10)
    assert lr(cosine, 0) == pytest.approx(0.01) and lr(cosine, 9) == pytest.approx(0.1)
    assert lr(cosine, 55) == pytest.approx(0.05, abs=1e-6) and lr(cosine, 100) == pytest.approx(0.0, abs=1e-7)
    step = PhasedSchedule([(0, 100, 0.1)], "step", step_size=30, gamma=0.1)
    assert lr(step, 29) == pytest.approx(0.1) and lr(step, 30) == pytest.approx(0.01) and lr(step, 60) == pytest.approx(0.001)
    onecycle = PhasedSchedule([(0, 100, 0.1)], "onecycle")
    assert lr(onecycle, 0) == pytest.approx(0.004) and lr(onecycle, 30) == pytest.approx(0.1)
    assert lr(onecycle, 100) == pytest.approx(0.1 / 25 / 1e4, rel=1e-3)


def test_nan_loss_stops_with_epoch_batch_and_advice(tmp_path):
    with pytest.raises(lab.TrainingDiverged, match=r"epoch 1, step \d+.*Lower the learning rate"):
        lab.train(**tiny(tmp_path, optimizer="sgd", learning_rate=1e12, momentum=0.0, steps_per_execution=1))
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.parametrize("settings,match", [
    (dict(learning_rate=-0.1), "learning_rate must be a positive number; received -0.1"),
    (dict(optimizer="adagrad"), "Unknown optimizer 'adagrad'.*'sgd'"),
    (dict(schedule="linear"), "Unknown schedule 'linear'"),
    (dict(epochs=3, phases=[{"epochs": 1}, {"epochs": 1}]), "phases add up to 2 epochs but epochs is 3"),
    (dict(batchsize=3), "Unknown training setting.*batchsize"),
    (dict(early_stopping_patience=2, validation_split=0.0), "validation_split is 0"),
])
def test_settings_are_validated_before_training(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match):
        lab.train(**tiny(tmp_path, **settings))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_early_stopping_restores_the_best_weights(tmp_path):
    result = lab.train(**tiny(tmp_path, epochs=6, learning_rate=1e-9, early_stopping_patience=1, monitor="val_loss"))
    losses = result.history["val_loss"]
    assert len(losses) < 6
    assert result.metrics["best_epoch"] == 1 + losses.index(min(losses))


def test_config_file_and_dataclass_fill_the_same_settings(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(textwrap.dedent("""
        model = "mnist_resnet"
        dataset = "digits"
        epochs = 2
        [model_options]
        num_blocks = [1, 0]
        [[phases]]
        epochs = 1
        learning_rate = 0.01
        [[phases]]
        epochs = 1
    """))
    config = lab.TrainConfig.from_file(path)
    assert config.model_options == {"num_blocks": [1, 0]} and config.resolved_phases()[0][2] == 0.01
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("model: lenet5\nepochs: 3\n")
    assert lab.TrainConfig.from_file(yaml_path).epochs == 3
    with pytest.raises(ValueError, match="Cannot parse"):
        (tmp_path / "bad.toml").write_text("epochs = = 2")
        lab.TrainConfig.from_file(tmp_path / "bad.toml")


RESUME_SCRIPT = """
import os, sys, keras
import keras_resnet_lab as lab

class Die(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == 2 and os.environ.get("DIE"):
            os._exit(3)  # a killed process: no clean-up runs

result = lab.train(model="mnist_resnet", dataset="digits", epochs=4, run_dir=sys.argv[1], verbose="line",
                   model_options={"num_blocks": 1}, steps_per_execution=4, callbacks=[Die()])
print("EPOCHS", list(range(1, 1 + len(result.history["loss"]))))
print("ITERATIONS", int(result.model.optimizer.iterations))
"""


@pytest.mark.slow
def test_a_killed_run_resumes_at_the_next_epoch(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    run = str(tmp_path / "run")
    killed = subprocess.run([sys.executable, str(script), run], env={**__import__("os").environ, "DIE": "1"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 3, killed.stderr[-2000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epochs_done"] == 2 and not state["finished"]
    resumed = subprocess.run([sys.executable, str(script), run], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming" in resumed.stdout and "after epoch 2" in resumed.stdout
    assert "Epoch 3/4" in resumed.stdout and "Epoch 1/4" not in resumed.stdout
    assert "EPOCHS [1, 2, 3, 4]" in resumed.stdout
    steps_per_epoch = int(np.ceil(1293 / 128))  # 90% of the 1,437 training digits
    assert f"ITERATIONS {4 * steps_per_epoch}" in resumed.stdout  # optimizer state came back


def test_compare_tabulates_and_frees_models(tmp_path, monkeypatch):
    import keras

    cleared = []
    clear_session = keras.backend.clear_session
    monkeypatch.setattr(keras.backend, "clear_session", lambda: (cleared.append(1), clear_session()))
    configs = lab.configs_for(models=["lenet5", "mnist_resnet"], dataset="digits", epochs=1, **QUICK)
    result = lab.compare(configs, run_dir=tmp_path / "cmp")
    assert [row["model"] for row in result.rows] == ["lenet5", "mnist_resnet"]
    assert all(r.model is None for r in result.results) and len(cleared) == 2  # nothing piles up
    for name in ("comparison.md", "comparison.json", "comparison_curves.png", "lenet5/model.keras"):
        assert (tmp_path / "cmp" / name).is_file()
    assert f"| lenet5 | {result.rows[0]['parameters']:,} | 1 |" in result.table()


def test_every_recipe_is_a_valid_config():
    for name in lab.list_recipes():
        config = lab.get_recipe(name).config()
        assert config.validate().recipe == name


def test_cli_models_recipes_and_train(tmp_path, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "21,840" in out and "126,346" in out and "11,689,512" in out and "269,722" in out
    assert main(["recipes"]) == 0
    assert "report000-mnist-baseline" in capsys.readouterr().out
    run = str(tmp_path / "cli")
    code = main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--run-dir", run,
                 "--quiet", "--set", "dataset_options.image_size=[16, 16]", "--steps-per-execution", "4"])
    assert code == 0
    assert "test accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["dataset_options"] == {"image_size": [16, 16]}


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    assert main(["train", "--model", "resnet19", "--dataset", "digits", "--run-dir", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown model 'resnet19'") and "Traceback" not in err
    code = main(["train", "--model", "mnist_resnet", "--dataset", "digits", "--run-dir", str(tmp_path / "nan"),
                 "--optimizer", "sgd", "--learning-rate", "1e12", "--set", "momentum=0.0", "--quiet",
                 "--steps-per-execution", "1"])
    assert code == 1 and "loss became" in capsys.readouterr().err


def test_ema_weights_are_validated_and_kept(tmp_path):
    result = lab.train(**tiny(tmp_path, epochs=2, ema_momentum=0.9))
    optimizer = result.model.optimizer
    assert optimizer.use_ema
    for variable, average in zip(result.model.trainable_variables, optimizer._model_variables_moving_average):
        np.testing.assert_allclose(variable.numpy(), average.numpy())  # the model holds the averaged weights
    with pytest.raises(ValueError, match="ema_momentum must be in"):
        lab.train(**tiny(tmp_path, ema_momentum=1.5))


def test_steps_per_execution_default_follows_the_measurements():
    from keras_resnet_lab.training.compiling import default_steps_per_execution

    assert default_steps_per_execution(lab.build_model("baseline_cnn")) == 16
    assert default_steps_per_execution(lab.build_model("mnist_resnet")) == 16
    assert default_steps_per_execution(lab.build_model("cifar_resnet20", input_shape=(16, 16, 3))) == 1
    assert default_steps_per_execution(lab.build_model("mnist_resnet", batch_norm=True)) == 1


def test_an_accuracy_tie_goes_to_the_epoch_with_the_lower_loss(tmp_path):
    from keras_resnet_lab.training.callbacks import RunKeeper
    from keras_resnet_lab.training.run_folder import RunFolder, RunState

    model = lab.build_model("baseline_cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    keeper = RunKeeper(RunFolder(tmp_path), RunState(), monitor="val_accuracy")
    keeper.set_model(model)
    epochs = [(0.90, 0.30), (0.95, 0.20), (0.95, 0.10), (0.95, 0.15), (0.93, 0.05)]
    for epoch, (accuracy, loss) in enumerate(epochs):
        keeper.on_epoch_begin(epoch)
        keeper.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
    assert keeper.state.best == 0.95
    assert keeper.state.best_epoch == 3  # ties with epoch 2 at a lower loss; epoch 4 ties at a higher one
    assert keeper.state.wait == 2
    assert keeper.state.best_checkpoint == "checkpoints/best-epoch-0003.weights.h5"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best-epoch-0003.weights.h5", "epoch-0005.weights.h5"]


def test_plateau_patience_survives_a_resume():
    from keras_resnet_lab.training.callbacks import ResumablePlateau

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    history = [{"epoch": e, "val_accuracy": acc, "learning_rate": 0.1} for e, acc in [(1, 0.5), (2, 0.5), (3, 0.4)]]
    plateau = ResumablePlateau(history, monitor="val_accuracy", mode="max", factor=0.5, patience=3)
    plateau.set_model(model)
    plateau.on_train_begin()
    assert (plateau.best, plateau.wait) == (0.5, 2)  # Keras' own callback would restart at 0
    plateau.on_epoch_end(3, {"val_accuracy": 0.45})
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    plateau.first_epoch = 2  # a new phase counts from its own first epoch
    plateau.on_train_begin()
    assert (plateau.best, plateau.wait) == (0.4, 0)


def test_plateau_schedule_trains_through_train(tmp_path):
    phases = [{"epochs": 2, "learning_rate": 0.002, "batch_size": 64}, {"epochs": 1, "learning_rate": 0.0005, "batch_size": 64}]
    result = lab.train(**tiny(tmp_path, epochs=3, schedule="plateau", phases=phases))
    rates = result.history["learning_rate"]
    assert rates[:2] == pytest.approx([0.002, 0.002]) and rates[2] == pytest.approx(0.0005)


_REPLICAS_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras, numpy as np, tensorflow as tf
    import keras_resnet_lab as lab
    from keras_resnet_lab.errors import ConfigError
    from keras_resnet_lab.training.replicas import split_batches

    run = lab.train("mnist_resnet", "digits", epochs=1, batch_size=64, cpu_replicas=2, run_dir=sys.argv[1],
                    verbose="quiet")
    # The same SGD steps on the same batches, split in 2 and whole. The last batch has one image,
    # so it is padded to two parts of one.
    x, y = next(iter(lab.load_dataset("digits", batch_size=129, seed=0).train))
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    def sgd_steps(count):
        keras.utils.set_random_seed(0)
        model = lab.build_model("mnist_resnet", input_shape=(8, 8, 1), num_classes=10)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        initial = model.get_weights()
        with split_batches(model, count):
            for _ in range(3):
                model.fit(batches, epochs=1, verbose=0)
        return initial, model.get_weights(), "call" in vars(model)
    (initial, two, patched), (_, one, _) = sgd_steps(2), sgd_steps(1)
    built = lab.build_model("mnist_resnet", input_shape=(8, 8, 1))
    trained_built = lab.train(built, "digits", epochs=1, batch_size=64, cpu_replicas=2, run_dir=sys.argv[1] + "-built",
                              verbose="quiet")
    from keras_resnet_lab.tuning import tune
    search = tune("mnist_resnet", "digits", search_space={"learning_rate": [0.003]}, tuner="random", max_trials=1,
                  max_epochs=1, batch_size=64, cpu_replicas=2, directory=sys.argv[1] + "-tuning", verbose="quiet")
    try:
        lab.train("resnet18", "digits", model_options={"stem": "small"}, epochs=1, batch_size=64, cpu_replicas=2,
                  run_dir=sys.argv[1] + "-bn", verbose="quiet")
        refused = None
    except ConfigError as error:
        refused = str(error)
    print("RESULT " + json.dumps({
        "accuracy": run.metrics["accuracy"], "built_accuracy": trained_built.metrics["accuracy"],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "largest_difference": max(float(np.abs(a - b).max()) for a, b in zip(two, one)),
        "changed": max(float(np.abs(a - b).max()) for a, b in zip(two, initial)),
        "still_patched": patched, "batch_norm_refused": refused,
        "tuned_accuracy": search.leaderboard[0]["score"] or 0.0}))
""")


def test_cpu_replicas_train_the_same_model_on_every_core(tmp_path):
    """A fresh process (TensorFlow's thread pools are fixed once it starts) trains with cpu_replicas=2."""
    script = tmp_path / "replicas.py"
    script.write_text(_REPLICAS_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], check=False, capture_output=True,
                          text=True, timeout=600)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, done.stderr[-3000:]
    result = json.loads(line[7:])
    assert result["intra_op_threads"] == 1 and result["inter_op_threads"] == 2
    assert result["accuracy"] > 0.2 and result["built_accuracy"] > 0.2  # one epoch on digits learns something
    assert result["largest_difference"] < 1e-5  # the same update as one replica on the whole batch
    assert result["changed"] > 1e-3  # ... after steps that moved the weights
    assert not result["still_patched"]  # the model's own call is back after training
    assert result["tuned_accuracy"] > 0.2  # a keras-tuner trial trains the same way
    assert "batch normalization" in result["batch_norm_refused"]
    assert (tmp_path / "run" / "model.keras").is_file()


def test_split_batches_runs_the_training_forward_pass_in_parts():
    from keras_resnet_lab.training.replicas import split_batches

    sizes = []
    inputs = keras.Input((3,))
    recorded = keras.layers.Lambda(lambda t: (sizes.append(t.shape[0]), t)[1])(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(recorded))
    x = np.arange(21, dtype="float32").reshape(7, 3)
    whole = model(x, training=True)
    sizes.clear()
    with split_batches(model, 2):
        parts = model(x, training=True)
        assert sizes == [3, 4]
        model(x, training=False)  # inference sees the whole batch
        one = model(x[:1], training=True)  # fewer examples than parts: padded, the padding's output dropped
        assert sizes == [3, 4, 7, 1, 1] and one.shape == (1, 2)
    np.testing.assert_allclose(parts, whole, rtol=1e-6)
    np.testing.assert_allclose(one, whole[:1], rtol=1e-6)
    model(x, training=True)
    assert sizes == [3, 4, 7, 1, 1, 7]  # the model's own call is back


def test_cpu_replicas_are_refused_where_they_cannot_work(tmp_path):
    import tensorflow as tf

    tf.constant(0)  # this process has started TensorFlow with its default thread pools
    with pytest.raises(lab.ConfigError, match="already run TensorFlow"):
        lab.train("mnist_resnet", "digits", epochs=1, batch_size=64, cpu_replicas=2, run_dir=str(tmp_path / "a"))
    with pytest.raises(lab.ConfigError, match="batch size of at least 2"):
        lab.train("mnist_resnet", "digits", epochs=1, batch_size=1, cpu_replicas=2, run_dir=str(tmp_path / "b"))
    model = lab.build_model("mnist_resnet", input_shape=(8, 8, 1))
    with pytest.raises(lab.ConfigError, match="configure_cpu_replicas"):
        lab.train(model, "digits", epochs=1, cpu_replicas=2, run_dir=str(tmp_path / "c"))


def test_the_progress_bar_never_counts_past_the_epochs_steps():
    from keras_resnet_lab.training.callbacks import StepProgbar

    bar = StepProgbar()
    bar.set_params({"verbose": 2, "epochs": 1, "steps": 41})
    bar.on_epoch_begin(0)
    bar.on_train_batch_end(47)  # the end of the third group of 16 steps
    assert bar.seen == 41
