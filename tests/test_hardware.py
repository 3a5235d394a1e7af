"""TensorFlow's oneDNN kernels on every x86 CPU: set before TensorFlow loads, the user's setting
wins, a late import is named, and the kernels compute what the default ones do."""

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_resnet_lab import hardware

PROBE = "import os, sys; import keras_resnet_lab; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), " \
        "keras_resnet_lab.hardware.fast_kernels_source)"


def _probe(env_value=None, first=""):
    env = {k: v for k, v in os.environ.items() if k != hardware.ONEDNN_ENV}
    if env_value is not None:
        env[hardware.ONEDNN_ENV] = env_value
    done = subprocess.run([sys.executable, "-c", first + PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.skipif(hardware.cpu_family() in ("other",), reason="oneDNN defaults are an x86 matter")
def test_the_package_turns_onednn_on_before_tensorflow_loads_and_the_users_setting_wins():
    assert _probe() == ["1", "package"]
    assert _probe("0") == ["0", "user"]
    assert _probe(first="import tensorflow; ") == ["None", "tensorflow", "first"]


def test_a_late_import_with_onednn_off_is_named_once(monkeypatch):
    monkeypatch.setattr(hardware, "fast_kernels_source", "tensorflow first")
    monkeypatch.setattr(hardware, "_warned", False)
    monkeypatch.delenv(hardware.ONEDNN_ENV, raising=False)
    monkeypatch.setattr(hardware, "onednn_enabled", lambda: False)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    with pytest.warns(UserWarning, match="Import keras_resnet_lab before TensorFlow"):
        hardware.check_fast_kernels()
    hardware.check_fast_kernels()  # once only: a second call says nothing (pytest would flag an unexpected warning)


def test_cpu_info_names_the_model_and_the_isa():
    info = hardware.cpu_info()
    assert info["model"] and info["cores"] >= 1
    assert set(info["isa"]) <= set(hardware.ISA_FLAGS)
    assert hardware.cpu_family({"machine": "x86_64", "isa": ["avx2", "fma"]}) == "avx2"
    assert hardware.cpu_family({"machine": "x86_64", "isa": ["avx2", "avx512f", "avx512_vnni"]}) == "avx512"
    assert hardware.cpu_family({"machine": "aarch64", "isa": []}) == "other"


OUTPUTS_AND_GRADIENTS = """
import sys, numpy as np
import keras_resnet_lab as lab
import keras, tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
keras.utils.set_random_seed(0)
result = {"onednn": np.asarray(_pywrap_util_port.IsMklEnabled())}
for name, shape in (("cifar_resnet20", (32, 32, 3)), ("baseline_cnn", (28, 28, 1))):
    model = lab.build_model(name, input_shape=shape, num_classes=10)
    x = tf.constant(np.random.default_rng(0).random((8, *shape), np.float32))
    y = tf.constant(np.arange(8) % 10)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    result[name + "/logits"] = logits.numpy()
    for variable, gradient in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
        result[name + "/grad/" + variable.path] = gradient.numpy()
np.savez(sys.argv[1], **result)
"""


@pytest.mark.skipif(hardware.cpu_family() in ("other",), reason="oneDNN defaults are an x86 matter")
def test_onednn_kernels_compute_what_the_default_kernels_do(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(OUTPUTS_AND_GRADIENTS)
    results = {}
    for setting in ("0", "1"):
        env = {**os.environ, hardware.ONEDNN_ENV: setting}
        done = subprocess.run([sys.executable, str(script), str(tmp_path / f"{setting}.npz")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        results[setting] = dict(np.load(tmp_path / f"{setting}.npz"))
    assert not results["0"].pop("onednn") and results["1"].pop("onednn")
    assert results["0"].keys() == results["1"].keys()
    for key, value in results["0"].items():
        # Float32 sums in another order: tiny elements differ more, the tensor as a whole agrees.
        relative = np.linalg.norm(results["1"][key] - value) / max(np.linalg.norm(value), 1e-12)
        assert relative < 1e-3, (key, relative)


def test_the_command_line_splits_batches_only_where_it_was_measured_faster(monkeypatch):
    from keras_resnet_lab import ConfigError, TrainConfig
    from keras_resnet_lab.training import replicas

    configured = []
    monkeypatch.setattr(replicas, "configure_cpu_replicas", configured.append)
    monkeypatch.setattr(replicas.os, "cpu_count", lambda: 2)
    assert replicas.auto_cpu_replicas(TrainConfig(model="baseline_cnn")) == 2 and configured == [2]
    assert replicas.auto_cpu_replicas(TrainConfig(model="mnist_resnet")) == 2
    assert replicas.auto_cpu_replicas(TrainConfig(model="mnist_resnet", model_options={"batch_norm": True})) == 1
    assert replicas.auto_cpu_replicas(TrainConfig(model="cifar_resnet20")) == 1
    assert replicas.auto_cpu_replicas(TrainConfig(model="baseline_cnn", batch_size=1)) == 1
    monkeypatch.setattr(replicas.os, "cpu_count", lambda: 16)  # not measured there: one replica
    assert replicas.auto_cpu_replicas(TrainConfig(model="baseline_cnn")) == 1

    def refuse(count):
        raise ConfigError("TensorFlow already started")

    monkeypatch.setattr(replicas.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(replicas, "configure_cpu_replicas", refuse)
    assert replicas.auto_cpu_replicas(TrainConfig(model="baseline_cnn")) == 1
