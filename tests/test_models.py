import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import keras

import keras_resnet_lab as lab
from keras_resnet_lab.models import get_spec

# (name, build options, trainable parameters): the papers' and torchvision's figures.
PINNED = [
    ("baseline_cnn", {}, 21_840),
    ("lenet5", {}, 107_786),
    ("mnist_resnet", {}, 126_346),
    ("cifar_resnet20", {}, 269_722),
    ("cifar_resnet32", {}, 464_154),
    ("cifar_resnet44", {}, 658_586),
    ("cifar_resnet56", {}, 853_018),
    ("cifar_resnet110", {}, 1_727_962),
    ("cifar_resnet", {"depth": 32}, 464_154),
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    ("resnet101", {}, 44_549_160),
    ("resnet152", {}, 60_192_808),
    ("resnet50", {"num_classes": 10}, 23_528_522),
]


def _deep_ones_slow(name, *values):
    """ResNet-101/152 (and cifar_resnet110) take seconds each to build: opt-in with -m slow."""
    marks = [pytest.mark.slow] if name in ("resnet101", "resnet152", "cifar_resnet110") else []
    return pytest.param(name, *values, marks=marks, id="-".join([name, *map(str, values[:1])]))


@pytest.mark.parametrize("name,options,expected", [_deep_ones_slow(*case) for case in PINNED])
def test_pinned_parameter_counts(name, options, expected):
    keras.backend.clear_session()
    model = lab.build_model(name, **options)
    assert lab.parameter_counts(model)["trainable"] == expected


def small_shape(name):
    spec = get_spec(name)
    if spec.input_shape[0] == 224:
        return (32, 32, 3)
    return (16, 16, 1) if spec.input_shape == (28, 28, 1) else (16, 16, 3)


@pytest.mark.parametrize("name", [_deep_ones_slow(name) for name in lab.list_models()])
def test_every_model_trains_one_step_and_every_weight_gets_a_gradient(name):
    keras.backend.clear_session()
    options = {"depth": 8} if name == "cifar_resnet" else {}
    model = lab.build_model(name, input_shape=small_shape(name), num_classes=3, **options)
    assert type(model).__name__ == "Functional"  # a functional model, not a subclass
    assert model.get_layer("predictions").units == 3
    images = tf.random.uniform((2, *small_shape(name)))
    labels = tf.constant([0, 2])
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    gradients = tape.gradient(loss, model.trainable_weights)
    assert logits.shape == (2, 3)
    assert np.isfinite(logits.numpy()).all()
    missing = [w.path for w, g in zip(model.trainable_weights, gradients) if g is None]
    assert not missing
    assert all(np.isfinite(g.numpy()).all() for g in gradients)


def test_small_stem_resnet18_on_8x8_digits():
    data = lab.load_dataset("digits", batch_size=16)
    model = lab.build_model("resnet18", input_shape=(8, 8, 1), num_classes=10, stem="small")
    images, _ = next(iter(data.test))
    assert model(images).shape == (16, 10)
    assert model.get_layer("stem_conv").kernel.shape == (3, 3, 1, 64)


def test_resnet50_on_mnist_batches(data_dir):
    data = lab.load_dataset("mnist", data_dir=data_dir, batch_size=8, pad=2)
    model = lab.build_model("resnet50", input_shape=(32, 32, 1), num_classes=10)
    images, _ = next(iter(data.test))
    assert model(images).shape == (8, 10)


def test_torchvision_layout_of_the_bottleneck():
    model = lab.build_model("resnet50", input_shape=(64, 64, 3), num_classes=10)
    # The stride sits in the 3x3 conv (ResNet v1.5), and convs before batch norm have no bias.
    assert model.get_layer("stage2_block1_1_conv").strides == (1, 1)
    assert model.get_layer("stage2_block1_2_conv").strides == (2, 2)
    assert not any(l.use_bias for l in model.layers if isinstance(l, keras.layers.Conv2D))
    assert model.get_layer("stage4_block3_out").output.shape[1:] == (2, 2, 2048)


SEEDED_BUILD = """
import sys, keras, numpy as np
import keras_resnet_lab as lab
keras.utils.set_random_seed(0)
model = lab.build_model("cifar_resnet20", input_shape=(8, 8, 1), num_classes=10)
np.save(sys.argv[1], np.concatenate([w.numpy().ravel() for w in model.weights]))
"""


def test_each_convolution_gets_its_own_draw_and_the_seed_fixes_them_in_any_process(tmp_path):
    """A Keras initializer draws its seed when made: a shared instance gave every same-shaped conv
    the same weights, and a different draw in every process for the same --seed."""
    keras.utils.set_random_seed(0)
    model = lab.build_model("cifar_resnet20", input_shape=(8, 8, 1), num_classes=10)
    first, second = (model.get_layer(f"stage1_block1_{i}_conv").kernel.numpy() for i in (1, 2))
    assert first.shape == second.shape and not np.allclose(first, second)
    assert np.std(first) == pytest.approx(np.sqrt(2.0 / (3 * 3 * 16)), rel=0.1)  # kaiming, fan_out
    subprocess.run([sys.executable, "-c", SEEDED_BUILD, str(tmp_path / "weights.npy")], check=True,
                   capture_output=True)
    here = np.concatenate([w.numpy().ravel() for w in model.weights])
    np.testing.assert_array_equal(np.load(tmp_path / "weights.npy"), here)


@pytest.mark.parametrize("name,last", [("resnet18", "_2_bn"), ("resnet50", "_3_bn")])
def test_zero_init_residual_starts_every_block_as_its_shortcut(name, last):
    """torchvision's zero_init_residual: each branch's last BN scale is 0, so a block that keeps
    its shape outputs relu(its input); the parameter count does not change."""
    plain = lab.build_model(name, input_shape=(32, 32, 3), num_classes=10)
    model = lab.build_model(name, input_shape=(32, 32, 3), num_classes=10, zero_init_residual=True)
    assert lab.parameter_counts(model) == lab.parameter_counts(plain)
    last_bns = [l for l in model.layers if l.name.startswith("stage") and l.name.endswith(last)]
    assert len(last_bns) == (8 if name == "resnet18" else 16)
    assert all(not l.gamma.numpy().any() for l in last_bns)
    assert plain.get_layer(last_bns[0].name).gamma.numpy().all()
    probe = keras.Model(model.input, [model.get_layer("stage1_block2_add").input[0],
                                      model.get_layer("stage1_block2_out").output])
    block_input, block_output = probe(tf.random.normal((2, 32, 32, 3)))
    np.testing.assert_allclose(block_output.numpy(), np.maximum(block_input.numpy(), 0), atol=1e-6)


def test_cifar_option_a_shortcut_has_no_parameters_and_b_projects():
    a = lab.build_model("cifar_resnet20", input_shape=(32, 32, 1))
    b = lab.build_model("cifar_resnet20", input_shape=(32, 32, 1), shortcut="B")
    assert lab.parameter_counts(b)["trainable"] > lab.parameter_counts(a)["trainable"]
    assert "stage2_block1_shortcut_conv" in [l.name for l in b.layers]


def test_num_blocks_per_stage_changes_the_residual_network():
    model = lab.build_model("mnist_resnet", num_blocks=(1, 3), activation="leaky_relu", batch_norm=True)
    names = [layer.name for layer in model.layers]
    assert "stage1_block1_add" in names and "stage1_block2_add" not in names
    assert "stage2_block3_add" in names and "stage1_block1_bn1" in names


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: lab.build_model("resnet19"), "Unknown model 'resnet19'.*resnet18"),
        (lambda: lab.build_model("resnet18", stem="tiny"), "Unknown stem 'tiny'.*'small'"),
        (lambda: lab.build_model("resnet18", colour=1), "no option 'colour'.*stem"),
        (lambda: lab.build_model("cifar_resnet", depth=21), "6n\\+2.*received 21"),
        (lambda: lab.build_model("mnist_resnet", num_blocks=(1, 2, 3)), "num_blocks.*received"),
        (lambda: lab.build_model("lenet5", activation="swish2"), "Unknown activation 'swish2'"),
        (lambda: lab.build_model("baseline_cnn", input_shape=(8, 8, 1)), "at least 16x16.*8x8"),
        (lambda: lab.build_model("baseline_cnn", conv_dropout=1.5), "conv_dropout.*1.5"),
        (lambda: lab.build_model("resnet18", zero_init_residual="yes"), "zero_init_residual.*'yes'"),
        (lambda: lab.build_model("lenet5", input_shape=(28, 28)), "input_shape.*received"),
        (lambda: lab.build_model("lenet5", num_classes=0), "num_classes.*received 0"),
    ],
)
def test_bad_names_and_options_raise_clear_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_keras_save_and_load_round_trip(tmp_path):
    model = lab.build_model("cifar_resnet20", input_shape=(16, 16, 3), num_classes=4)
    images = tf.random.uniform((2, 16, 16, 3))
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model(images).numpy(), reloaded(images).numpy())


def test_freeze_trains_only_the_last_blocks():
    model = lab.build_model("resnet18", input_shape=(16, 16, 3), num_classes=10, stem="small")
    lab.freeze(model, trainable_last=3)
    trainable_layers = {l.name for l in model.layers if l.trainable and l.weights}
    assert trainable_layers and all(
        name.startswith(("stage4_block1", "stage4_block2")) or name == "predictions" for name in trainable_layers
    )
    bn = model.get_layer("stage1_block1_1_bn")
    assert not bn.trainable
    images = tf.random.uniform((4, 16, 16, 3))
    before = bn.moving_mean.numpy().copy()
    model(images, training=True)
    np.testing.assert_array_equal(before, bn.moving_mean.numpy())  # frozen BN runs in inference mode
    counts = lab.parameter_counts(model)
    assert counts["trainable"] == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    import io

    printed = io.StringIO()
    assert lab.print_parameter_summary(model, file=printed) == counts
    assert f"{counts['trainable']:,} trainable" in printed.getvalue() and "frozen units (7)" in printed.getvalue()
    with pytest.raises(ValueError, match="trainable_last must be"):
        lab.freeze(model, trainable_last=99)


def _train_step(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
    return [y, *tape.gradient(loss, [x, layer.gamma, layer.beta])]


def test_fused_batch_norm_matches_keras_batch_normalization():
    from keras_resnet_lab.models.layers import BatchNorm

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (8, 5, 5, 4)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(8, 5, 5, 4)).astype("float32"))
    ours, reference = BatchNorm(epsilon=1e-5, momentum=0.9), keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
    for layer in (ours, reference):
        layer.build(x.shape)
        layer.gamma.assign(np.arange(1, 5, dtype="float32"))
        layer.beta.assign(np.full(4, 0.5, "float32"))
    for got, expected in zip(_train_step(ours, x, upstream), _train_step(reference, x, upstream)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), reference.moving_mean.numpy(), rtol=1e-6, atol=1e-7)
    # The moving variance takes the unbiased batch variance, as PyTorch's running_var does.
    n = 8 * 5 * 5
    batch_variance = np.var(x.numpy().reshape(-1, 4), axis=0)
    np.testing.assert_allclose(ours.moving_variance.numpy(), 0.9 + 0.1 * batch_variance * n / (n - 1), rtol=1e-5)
    # Inference uses the moving statistics through Keras' own path.
    np.testing.assert_allclose(ours(x, training=False).numpy(), reference(x, training=False).numpy(), atol=0.05)


def test_fused_batch_norm_under_mixed_bfloat16_trains_and_saves(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = lab.build_model("cifar_resnet20", input_shape=(16, 16, 3), num_classes=3)
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(np.random.rand(8, 16, 16, 3).astype("float32"), np.arange(8) % 3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert type(model.get_layer("stem_bn")).__name__ == "BatchNorm"
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("stem_bn")).__name__ == "BatchNorm"
    x = np.random.rand(2, 16, 16, 3).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-2)
