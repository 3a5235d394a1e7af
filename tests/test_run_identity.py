"""A run is its content; `train` takes a Keras user's own objects; files load without the package."""

import json
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_resnet_lab as lab
from keras_resnet_lab.cli import main

QUICK = dict(verbose="quiet", steps_per_execution=4, reports=False)


def dense_net(units):
    """A plain Keras model; every one built in a notebook is named 'functional'."""
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Dense(units, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(10)(hidden), name="functional")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def digits():
    return lab.load_dataset("digits", validation_split=0.1)


def test_two_models_with_one_name_get_two_runs(in_tmp, digits):
    small, large = dense_net(2), dense_net(8)
    first = lab.train(small, digits, epochs=1, **QUICK)
    second = lab.train(large, digits, epochs=1, **QUICK)
    assert first.run_dir != second.run_dir
    assert first.metrics["parameters"]["trainable"] == 160 and second.metrics["parameters"]["trainable"] == 610
    assert second.model.count_params() == 610  # its own model, not the first run's


def test_changed_data_is_a_new_run_and_the_config_records_it(in_tmp, digits):
    plain = lab.train("lenet5", digits, epochs=1, **QUICK)
    augmented = lab.load_dataset("digits", validation_split=0.1, augment="affine", standardize=True)
    changed = lab.train("lenet5", augmented, epochs=1, **QUICK)
    assert changed.run_dir != plain.run_dir
    recorded = json.loads((changed.run_dir / "config.json").read_text())["dataset_options"]
    assert recorded["augment"] == ["affine"] and recorded["standardize"] is True
    with pytest.raises(lab.ConfigError, match="loaded with validation_split=0.1.*load_dataset"):
        lab.train("lenet5", digits, epochs=1, validation_split=0.3, **QUICK)


def test_another_run_in_a_named_folder_is_refused_naming_the_difference(in_tmp, digits):
    lab.train(dense_net(2), digits, epochs=1, run_dir="runs/mine", **QUICK)
    with pytest.raises(lab.ConfigError, match=r"runs/mine holds another run \(architecture.*parameters: 160 -> 610"):
        lab.train(dense_net(8), digits, epochs=1, run_dir="runs/mine", **QUICK)
    pixels = lab.load_dataset("digits", validation_split=0.1, standardize=True)
    with pytest.raises(lab.ConfigError, match=r"data\.(content_sha256|options\.standardize)"):
        lab.train(dense_net(2), pixels, epochs=1, run_dir="runs/mine", **QUICK)


def test_a_mistyped_option_writes_nothing_and_the_corrected_command_runs(in_tmp, capsys):
    command = ["train", "--model", "mnist_resnet", "--dataset", "digits", "--epochs", "1", "--quiet",
               "--run-dir", "runs/typo", "--steps-per-execution", "4"]
    assert main([*command, "--set", "model_options.num_block=1"]) == 1
    assert "has no option 'num_block'" in capsys.readouterr().err
    assert not (in_tmp / "runs").exists()
    assert main([*command, "--set", "dataset_options.colour=1"]) == 1
    assert "Unknown dataset option 'colour'" in capsys.readouterr().err and not (in_tmp / "runs").exists()
    assert main([*command, "--set", "model_options.num_blocks=1", "--set", "reports=false"]) == 0


@pytest.mark.parametrize("settings,match", [
    (dict(mixed_precision="no"), "mixed_precision must be true or false; received 'no'"),
    (dict(momentum="high"), "momentum must be a number; received 'high'"),
    (dict(model_options=5), "model_options must be a table"),
    (dict(phases=5), "phases must be a list"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(run_dir=5), "run_dir must be a string or unset"),
    (dict(step_gamma=-1.0), r"step_gamma must be in \(0, 1\)"),
    (dict(step_epochs=0), "step_epochs must be a positive integer"),
])
def test_every_field_is_type_and_range_checked(in_tmp, settings, match):
    with pytest.raises(lab.ConfigError, match=match):
        lab.train("mnist_resnet", "digits", epochs=1, **{**QUICK, **settings})
    assert not (in_tmp / "runs").exists()


def test_compare_checks_every_model_before_the_first_trains(in_tmp):
    configs = lab.configs_for(models=["lenet5", "mnist_resnet"], dataset="digits", epochs=1, **QUICK)
    configs[1] = configs[1].replace(model_options={"num_block": 1})
    with pytest.raises(lab.ConfigError, match="num_block"):
        lab.compare(configs, run_dir="cmp")
    assert not (in_tmp / "cmp").exists()


def test_arrays_and_tf_data_train_like_a_keras_fit(in_tmp):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 8, 8), dtype=np.uint8)
    y = (x.reshape(96, -1).mean(axis=1) > 127.5).astype(int)  # a learnable rule: bright or dark
    from_arrays = lab.train("lenet5", (x, y), test_data=(x[:32], y[:32]), epochs=1, batch_size=32, **QUICK)
    assert from_arrays.metrics["split"] == "test" and from_arrays.metrics["num_examples"] == 32
    assert from_arrays.model.output_shape[-1] == 2  # classes inferred from the labels
    assert set(from_arrays.metrics) >= {"loss", "accuracy"}
    dataset = tf.data.Dataset.from_tensor_slices((x[..., None].astype("float32") / 255, y)).batch(16)
    from_tf = lab.train("lenet5", dataset, validation_data=dataset.take(2), epochs=1, class_names=["dark", "bright"],
                        **QUICK)
    assert from_tf.metrics["split"] == "validation" and from_tf.config.batch_size == 16
    with pytest.raises(lab.DataError, match="A label is 5, but there are 2 classes"):
        lab.train("lenet5", (x, np.where(y, 5, 0)), num_classes=2, epochs=1, **QUICK)
    with pytest.raises(lab.DataError, match="96 images but 95 labels"):
        lab.train("lenet5", (x, y[:95]), epochs=1, **QUICK)


def test_a_users_compile_optimizer_and_schedule_objects_are_kept(in_tmp, digits):
    model = dense_net(4)
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    kept = lab.train(model, digits, epochs=2, verbose="quiet", reports=False)  # no setting about compiling
    assert kept.history["learning_rate"] == pytest.approx([0.05, 0.05])  # the user's own optimizer
    assert kept.config.optimizer["class_name"] == "SGD"
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    scheduled = lab.train(dense_net(4), digits, epochs=1, optimizer=keras.optimizers.SGD(momentum=0.5),
                          learning_rate=schedule, **QUICK)
    steps = int(np.ceil(digits.num_examples["train"] / 128))
    assert scheduled.history["learning_rate"][0] == pytest.approx(0.1 * 0.5 ** (steps - 1))
    assert scheduled.model.optimizer.momentum == 0.5


def test_any_keras_model_finishes_with_its_report(in_tmp, digits):
    """A Conv2D(activation='relu') net has no separate activation layer to plot."""
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(features)))
    result = lab.train(model, digits, epochs=1, verbose="quiet", steps_per_execution=4)
    assert (result.run_dir / "report.html").is_file() and (result.run_dir / "plots" / "curves.png").is_file()
    assert lab.train(model, digits, epochs=1, verbose="quiet", steps_per_execution=4).run_dir == result.run_dir


def test_a_model_file_loads_in_plain_keras_and_predicts_the_same(in_tmp, digits):
    result = lab.train("cifar_resnet20", digits, epochs=1, batch_size=64, **QUICK)  # batch norm and option A
    images = next(iter(digits.test))[0].numpy()[:8]
    expected = result.model.predict(images, verbose=0)
    np.save(in_tmp / "images.npy", images)
    script = ("import sys, numpy as np, keras; m = keras.saving.load_model(sys.argv[1]); "
              "assert not any(k.startswith('keras_resnet_lab') for k in sys.modules); "
              "np.save(sys.argv[2], m.predict(np.load(sys.argv[3]), verbose=0))")
    done = subprocess.run([sys.executable, "-c", script, str(result.run_dir / "model.keras"), "out.npy", "images.npy"],
                          capture_output=True, text=True, timeout=300, cwd=in_tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(in_tmp / "out.npy"), expected, rtol=1e-5, atol=1e-5)


def test_the_package_face_starts_no_framework():
    code = ("import sys, keras_resnet_lab as lab; lab.TrainConfig(); lab.list_recipes(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'jax')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]
    for command in (["--help"], ["recipes"], ["--version"]):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "keras_resnet_lab.cli", *command], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and time.perf_counter() - start < 10  # seconds, not a framework start
        assert "cuda" not in done.stderr.lower()
    assert lab.tune.__name__ == "tune" and lab.TuneConfig.__name__ == "TuneConfig"


def test_every_flag_has_help_and_every_command_examples():
    import argparse

    from keras_resnet_lab.cli import build_parser

    def commands(parser, name):
        """(name, parser, is a command) for the program, each command and each group of commands."""
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        yield name, parser, not subparsers
        for action in subparsers:
            for sub_name, sub in action.choices.items():
                yield from commands(sub, f"{name} {sub_name}")

    found = list(commands(build_parser(), "keras-resnet-lab"))
    # models recipes train compare demo reproduce export predict tune visualize-activations
    assert sum(leaf for _, _, leaf in found) == 10
    for name, parser, leaf in found:
        if leaf:
            assert parser.epilog and "examples:" in parser.epilog and "keras-resnet-lab" in parser.epilog, name
        for action in parser._actions:  # `visualize`'s choice of what to draw too
            assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings)


def test_overwrite_deletes_only_a_runs_own_files(in_tmp):
    keep = in_tmp / "notes"
    keep.mkdir()
    (keep / "thesis.tex").write_text("mine")
    with pytest.raises(lab.ConfigError, match="thesis.tex, which is not a run"):
        lab.train("lenet5", "digits", epochs=1, run_dir=str(keep), overwrite=True, **QUICK)
    assert (keep / "thesis.tex").read_text() == "mine"
    with pytest.raises(lab.ConfigError, match="working, home or root folder"):
        lab.train("lenet5", "digits", epochs=1, run_dir=".", overwrite=True, **QUICK)
    run = lab.train("lenet5", "digits", epochs=1, run_dir="runs/a", **QUICK).run_dir
    (run / "my_notes.txt").write_text("mine")
    lab.train("lenet5", "digits", epochs=1, run_dir="runs/a", overwrite=True, learning_rate=0.01, **QUICK)
    assert (run / "my_notes.txt").read_text() == "mine" and (run / "model.keras").is_file()


def test_a_folder_being_trained_into_is_locked(in_tmp):
    from keras_resnet_lab.training.run_folder import RunFolder

    (in_tmp / "runs" / "busy").mkdir(parents=True)
    script = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
              "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, "runs/busy/.lock"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(lab.LabError, match="Another process is training into runs/busy"):
            RunFolder("runs/busy").lock()
    finally:
        holder.kill()
