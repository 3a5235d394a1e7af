"""`train` on every local device, on TensorFlow and on JAX, and the whole run on JAX's backend.

Each check runs in a fresh process: the backend and the virtual CPU devices are fixed when the
framework starts.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

DIGITS = textwrap.dedent("""
    import json, sys
    from sklearn.datasets import load_digits
    digits = load_digits()
    data = (digits.images * 255 / 16).astype("uint8")[:320], digits.target[:320]
""")

# Two virtual CPU devices: XLA_FLAGS for JAX, logical devices for TensorFlow (before it starts).
EQUIVALENCE = textwrap.dedent("""
    import keras
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import keras_resnet_lab as lab
""") + DIGITS + textwrap.dedent("""
    model, options = sys.argv[1], json.loads(sys.argv[2])
    results = {}
    for devices in (1, 2):
        results[devices] = lab.train(model, data, devices=devices, model_options=options, epochs=2, batch_size=64,
                                     validation_split=0.2, optimizer="sgd", learning_rate=0.05,
                                     run_dir=f"{sys.argv[3]}/devices-{devices}", verbose="quiet", reports=False)
    difference = max(float(np.abs(a - b).max())
                     for a, b in zip(results[1].model.get_weights(), results[2].model.get_weights()))
    print(json.dumps({"difference": difference, "devices": [results[d].metrics["devices"] for d in (1, 2)],
                      "backend": results[2].metrics["backend"],
                      "accuracy": [results[d].metrics["accuracy"] for d in (1, 2)]}))
""")


def _run(script, args, backend, tmp_path, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("backend, model, options", [
    ("tensorflow", "lenet5", {}),
    ("jax", "lenet5", {}),
    ("jax", "mnist_resnet", {"batch_norm": True}),  # JAX normalizes over the global batch, as one device does
])
def test_two_devices_train_what_one_device_trains_on_the_same_global_batch(backend, model, options, tmp_path):
    result = json.loads(_run(EQUIVALENCE, [model, json.dumps(options), str(tmp_path)], backend, tmp_path)
                        .strip().splitlines()[-1])
    assert result["devices"] == [1, 2] and result["backend"] == backend
    assert result["difference"] < 1e-5, result
    assert result["accuracy"][0] == pytest.approx(result["accuracy"][1], abs=1 / 64)  # same test set, all of it


WHOLE_RUN = textwrap.dedent("""
    import keras, numpy as np
    import keras_resnet_lab as lab
""") + DIGITS + textwrap.dedent("""
    class Killed(Exception):
        pass

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Killed

    settings = dict(run_dir="run", epochs=2, batch_size=64, validation_split=0.2, verbose="line")
    try:
        lab.train("mnist_resnet", data, callbacks=[KillAfterFirstEpoch()], **settings)
    except Killed:
        print("KILLED")
    result = lab.train("mnist_resnet", data, **settings)
    print("BACKEND", result.metrics["backend"], "DEVICES", result.metrics["devices"], "EPOCHS", len(result.history["loss"]))
    exported = lab.load_exported(lab.export(result.run_dir, "exported"))
    probabilities, _ = exported.predict(data[0][:8, :, :, None])
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(result.model(data[0][:8, :, :, None] / 255.0)))
    print("EXPORT_DIFFERENCE", float(np.abs(probabilities - expected).max()))
    tuned = lab.tune("mnist_resnet", "digits", max_trials=2, max_epochs=1, epochs=1, tuner="random", directory="tuning",
                     search_space={"learning_rate": [0.001, 0.003]}, validation_split=0.2, verbose="quiet")
    print("TRIALS", len(tuned.leaderboard))
""")


def test_a_whole_run_on_jax_resumes_reports_exports_and_tunes(tmp_path):
    output = _run(WHOLE_RUN, [], "jax", tmp_path)
    assert "KILLED" in output and "Resuming" in output and "after epoch 1" in output
    assert "BACKEND jax DEVICES 2 EPOCHS 2" in output  # both virtual CPU devices, by default
    assert float(output.split("EXPORT_DIFFERENCE ")[1].split()[0]) < 1e-5
    assert "TRIALS 2" in output
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "plots" / "curves.png").is_file()


def test_more_devices_than_the_process_sees_is_refused():
    import keras_resnet_lab as lab
    from keras_resnet_lab import ConfigError

    with pytest.raises(ConfigError, match="devices=64, but this process sees 1"):
        lab.train("lenet5", "digits", devices=64, epochs=1)


# ---------------------------------------------------------------------------- several processes (JAX)

def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(run_dir, *, processes, devices, epochs, tmp_path, port=None, data=("--dataset", "digits")):
    """The CLI's `train`, once per process, on `devices` virtual CPU devices each; returns the Popens."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "KERAS_RESNET_LAB_HEARTBEAT_S": "10",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, "-m", "keras_resnet_lab.cli", "train", "--model", "lenet5", *data,
               "--epochs", str(epochs), "--batch-size", "64", "--optimizer", "sgd", "--learning-rate", "0.05",
               "--run-dir", str(run_dir), "--set", "verbose=line"]
    started = []
    for index in range(processes):
        extra = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(index)]
        log = open(tmp_path / f"{run_dir.name}-{index}.log", "a")
        started.append(subprocess.Popen(command + (extra if processes > 1 else []), env=env, stdout=log,
                                        stderr=subprocess.STDOUT, cwd=tmp_path))
    return started


def _finish(started, timeout=600):
    return [process.wait(timeout=timeout) for process in started]


def _weights(run_dir):
    import keras

    return keras.saving.load_model(run_dir / "model.keras").get_weights()


def _streamed_folder(root):
    """A folder of 300 training and 60 test 16x16 images of two classes, streamed (not decoded up front)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 150), ("test", 30)):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 120, (16, 16)) + 100 * label * (np.arange(16) % 2)
                Image.fromarray(pixels.astype("uint8")).save(folder / f"{index}.png")
    options = f'{{path="{root}", in_memory=false, augment=["crop", "flip"], channels=1, image_size=[28, 28]}}'
    return ("--dataset", "image_folder", "--set", f"dataset_options={options}"), 60


@pytest.mark.parametrize("source", ["digits", "streamed folder"])
def test_two_processes_of_two_devices_train_what_one_process_of_four_trains(tmp_path, source):
    import numpy as np

    data, tested = (("--dataset", "digits"), 360) if source == "digits" else _streamed_folder(tmp_path / "images")
    one, two = tmp_path / "one", tmp_path / "two"
    assert _finish(_start(one, processes=1, devices=4, epochs=2, tmp_path=tmp_path, data=data)) == [0]
    assert _finish(_start(two, processes=2, devices=2, epochs=2, tmp_path=tmp_path, port=_free_port(), data=data)) == [0, 0]
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    assert [(m["devices"], m["processes"]) for m in metrics] == [(4, 1), (4, 2)]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[1]["num_examples"] == tested
    difference = max(float(np.abs(a - b).max()) for a, b in zip(_weights(one), _weights(two)))
    assert difference < 1e-5
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != "images")
    assert runs == ["one", "two"]  # one folder per run


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_both_resume(tmp_path):
    import time

    run = tmp_path / "run"
    started = _start(run, processes=2, devices=2, epochs=60, tmp_path=tmp_path, port=_free_port())
    deadline = time.time() + 300
    while time.time() < deadline:
        state = run / "state.json"
        if state.is_file() and json.loads(state.read_text())["epochs_done"] >= 2:
            break
        time.sleep(0.5)
    started[1].kill()
    # Inside a collective it notices at once (our message, exit 1); elsewhere JAX's heartbeat check ends it
    # after $KERAS_RESNET_LAB_HEARTBEAT_S with its own message (SIGABRT).
    assert started[0].wait(timeout=120) != 0
    log = (tmp_path / "run-0.log").read_text()
    ours = "another process of this run is gone" in log and "Start every process again" in log
    assert ours or "This most likely indicates that another task died" in log
    assert _finish(_start(run, processes=2, devices=2, epochs=60, tmp_path=tmp_path, port=_free_port())) == [0, 0]
    assert "Resuming" in (tmp_path / "run-0.log").read_text()
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 60


def test_several_processes_on_tensorflow_are_refused_naming_the_keras_issue(monkeypatch):
    import keras_resnet_lab as lab
    from keras_resnet_lab import ConfigError

    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(ConfigError, match="keras-team/keras#20585.*KERAS_BACKEND=jax"):
        lab.train("lenet5", "digits", epochs=1)
