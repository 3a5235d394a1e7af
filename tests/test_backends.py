"""The models build, compile and train on Keras's JAX backend, with TensorFlow out of reach.

The GPU benchmark runs them so on machines where TensorFlow's GPU build cannot be installed. Each
check runs in a fresh process: Keras fixes its backend when it is first imported.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["tensorflow"] = None  # any import of TensorFlow now fails

    import numpy as np
    import keras_resnet_lab as lab
    from keras_resnet_lab.training.compiling import compile_model, dtype_policy

    config = lab.TrainConfig(model="cifar_resnet20", batch_size=8, optimizer="adam", mixed_precision=True)
    with dtype_policy(config.mixed_precision):
        model = lab.build_model("cifar_resnet20", input_shape=(16, 16, 3))
        compile_model(model, config, config.resolved_phases(), 16)
    rng = np.random.default_rng(0)
    history = model.fit(rng.random((16, 16, 16, 3), dtype="float32"), rng.integers(0, 10, 16),
                        batch_size=8, epochs=1, verbose=0)
    print("parameters", lab.parameter_counts(model)["trainable"])
    print("policy", model.dtype_policy.name)
    print("jit", model.jit_compile)
    print("loss", history.history["loss"][0])
    try:
        lab.configure_cpu_replicas
    except AttributeError as error:
        print("replicas:", error)
""")


@pytest.fixture(scope="module")
def jax_run():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def test_a_resnet_builds_with_the_papers_parameter_count_on_jax(jax_run):
    assert jax_run["parameters"] == "269722"


def test_compile_model_jits_the_step_and_mixes_precision_on_jax(jax_run):
    # Without jit a JAX step runs op by op: ResNet-50 trained at 44 images/s on an H100, not 5,174.
    assert jax_run["jit"] == "True"
    assert jax_run["policy"] == "mixed_bfloat16"  # no GPU here: bfloat16, as on TensorFlow
    assert float(jax_run["loss"]) > 0


def test_the_tensorflow_only_parts_say_which_backend_they_need(jax_run):
    assert "needs Keras's TensorFlow backend" in jax_run["replicas:"]
    assert "'jax'" in jax_run["replicas:"]
