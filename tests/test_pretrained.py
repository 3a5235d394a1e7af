"""Pretrained weights: logit parity with a torchvision-layout reference, safe reading, the mapping's
errors, the pinned "imagenet" files, the channel rule, ImageNet normalization and fine-tuning."""

import importlib.util
import os
import pickle
import zipfile

import numpy as np
import pytest

import keras_resnet_lab as lab
from keras_resnet_lab import ConfigError, TrainConfig
from keras_resnet_lab.errors import WeightsError
from keras_resnet_lab.models import build_model, save_torchvision_weights, torchvision_state_dict
from keras_resnet_lab.models import checkpoints
from keras_resnet_lab.models.pretrained import adapt_stem_kernel, load_torchvision_weights

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is a test extra")
TOLERANCE = 1e-4  # of the largest logit


# ---------------------------------------------------------------------------- parity with the reference

@needs_torch
@pytest.mark.parametrize("depth, size, classes, channels", [
    (18, 64, 1000, 3), (18, 57, 10, 1), (18, 57, 1000, 3), (18, 64, 10, 1),
    (50, 57, 1000, 1), (50, 64, 10, 3), (50, 64, 1000, 1), (50, 57, 10, 3),
])
def test_logits_match_the_torchvision_reference_from_both_formats(depth, size, classes, channels, tmp_path):
    from benchmarks.parity import parity_errors

    errors = parity_errors(depth, size, classes, channels, tmp_path)
    assert errors["pth"] < TOLERANCE and errors["safetensors"] < TOLERANCE, errors


@needs_torch
def test_our_reader_matches_torch_load_and_converts_half_precision(tmp_path):
    import torch

    state = {"a": torch.randn(3, 4), "b": torch.randn(4, 3).t(), "h": torch.randn(5).half(),
             "bf": torch.randn(6).to(torch.bfloat16), "n": torch.tensor(7)}
    torch.save(state, tmp_path / "s.pth")
    read = checkpoints.read_checkpoint(tmp_path / "s.pth")
    for key, tensor in state.items():
        expected = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        np.testing.assert_array_equal(read[key], expected)
    assert read["bf"].dtype == np.float32 and read["n"].dtype == np.int64


def test_saved_checkpoints_load_back_identically_from_both_formats(tmp_path):
    model = build_model("resnet18", input_shape=(32, 32, 3), num_classes=7)
    paths = [tmp_path / "w.safetensors"]
    if importlib.util.find_spec("torch"):
        paths.append(tmp_path / "w.pth")
    for path in paths:
        save_torchvision_weights(model, path)
        again = build_model("resnet18", input_shape=(32, 32, 3), num_classes=7, weights=str(path))
        for ours, theirs in zip(model.weights, again.weights):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


# ---------------------------------------------------------------------------- unsafe and damaged files

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _torch_zip(path, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ckpt/data.pkl", pickle.dumps(payload, protocol=2))
        archive.writestr("ckpt/version", "3\n")


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    _torch_zip(tmp_path / "evil.pth", {"conv1.weight": _RunsCode(str(marker))})
    with pytest.raises(WeightsError, match=r"posix\.mkdir|os\.mkdir") as error:
        build_model("resnet18", weights=str(tmp_path / "evil.pth"))
    assert "Nothing from it was run" in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "not a zip-format PyTorch checkpoint|refused"),
    (None, "not a PyTorch checkpoint"),
])
def test_damaged_checkpoints_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        checkpoints.read_checkpoint(path)


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
    """NumPy reads bfloat16 once ml_dtypes (which Keras imports) has registered it."""
    import json

    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    bf16 = np.array([0x3F80, 0xC000], "<u2").tobytes()  # 1.0 and -2.0
    (tmp_path / "b.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bf16)
    read = checkpoints.read_checkpoint(tmp_path / "b.safetensors")
    assert read["w"].dtype == np.float32 and read["w"].tolist() == [1.0, -2.0]


# ---------------------------------------------------------------------------- the mapping's errors

@pytest.fixture(scope="module")
def resnet18_state():
    return torchvision_state_dict(build_model("resnet18", input_shape=(32, 32, 3), num_classes=10))


def _load(state, **build):
    model = build_model("resnet18", **{"input_shape": (32, 32, 3), "num_classes": 10, **build})
    return model, load_torchvision_weights(model, state, source="ckpt.pth", small_stem=build.get("stem") == "small")


def test_a_missing_tensor_is_named(resnet18_state):
    state = dict(resnet18_state)
    del state["layer2.0.downsample.1.running_var"]
    with pytest.raises(WeightsError, match=r"missing layer2\.0\.downsample\.1\.running_var"):
        _load(state)


def test_an_unexpected_tensor_is_named(resnet18_state):
    with pytest.raises(WeightsError, match=r"unexpected layer5\.0\.conv1\.weight"):
        _load({**resnet18_state, "layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})


def test_a_misshapen_tensor_is_named_with_both_shapes(resnet18_state):
    state = {**resnet18_state, "layer3.1.conv2.weight": np.zeros((256, 128, 3, 3), np.float32)}
    with pytest.raises(WeightsError, match=r"layer3\.1\.conv2\.weight has shape \(256, 128, 3, 3\).*\(256, 256, 3, 3\)"):
        _load(state)


def test_a_checkpoint_of_another_depth_says_which_it_is():
    state = torchvision_state_dict(build_model("resnet34", input_shape=(32, 32, 3), num_classes=10))
    with pytest.raises(WeightsError, match="is a resnet34"):
        _load(state)


def test_heads_and_stems_that_do_not_fit_are_fresh_and_said(resnet18_state):
    model, said = _load(resnet18_state, num_classes=3, stem="small")
    assert any("head (predictions, 3 classes) is initialised fresh" in line for line in said)
    assert any("small stem" in line for line in said)
    _, said = _load(resnet18_state)
    assert said == ["resnet18: loaded 102 tensors from ckpt.pth"]
    np.testing.assert_array_equal(model.get_layer("stage4_block2_2_bn").moving_variance.numpy(),
                                  resnet18_state["layer4.1.bn2.running_var"])


def test_weights_are_refused_for_models_without_a_checkpoint_layout():
    with pytest.raises(ConfigError, match="takes no pretrained weights.*resnet18"):
        build_model("cifar_resnet20", weights="imagenet")
    with pytest.raises(ConfigError, match="weights must be None, 'imagenet' or the path"):
        build_model("resnet18", weights="imagenet21k")
    with pytest.raises(ConfigError, match="weights must be 'imagenet' or the path"):
        TrainConfig(weights="model.h5").validate()


# ---------------------------------------------------------------------------- the channel rule

def test_first_conv_adaptation_follows_timm():
    kernel = np.random.default_rng(0).normal(size=(4, 3, 7, 7))
    np.testing.assert_allclose(adapt_stem_kernel(kernel, 1), kernel.sum(axis=1, keepdims=True))
    four = adapt_stem_kernel(kernel, 4)
    np.testing.assert_allclose(four, np.concatenate([kernel, kernel[:, :1]], axis=1) * 0.75)
    gray = kernel[:, :1]
    np.testing.assert_allclose(adapt_stem_kernel(gray, 3), np.repeat(gray, 3, axis=1) / 3)


def test_imagenet_statistics_for_gray_images_are_one_mean_and_std():
    from keras_resnet_lab.data.pipeline import IMAGENET_MEAN, IMAGENET_STD, imagenet_stats

    assert imagenet_stats(3) == (IMAGENET_MEAN, IMAGENET_STD)
    (mean,), (std,) = imagenet_stats(1)
    assert mean == pytest.approx(0.449) and std == pytest.approx(0.226)


# ---------------------------------------------------------------------------- the "imagenet" files

def test_a_file_with_the_wrong_sha256_is_refused_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_RESNET_LAB_WEIGHTS", str(tmp_path))
    (tmp_path / "resnet18-f37072fd.pth").write_bytes(b"not the published weights")
    with pytest.raises(WeightsError, match="must have f37072fd47e89c5e"):
        build_model("resnet18", weights="imagenet")
    assert (tmp_path / "resnet18-f37072fd.pth").exists()


def test_offline_imagenet_fails_fast_naming_file_url_hash_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("KERAS_RESNET_LAB_WEIGHTS", raising=False)
    monkeypatch.setattr(checkpoints, "WEIGHTS_URL_ROOT", "http://127.0.0.1:9/models/")
    with pytest.raises(WeightsError) as error:
        build_model("resnet50", weights="imagenet")
    message = str(error.value)
    for part in ("resnet50-0676ba61.pth", "http://127.0.0.1:9/models/resnet50-0676ba61.pth", "0676ba61b6795bbe",
                 "KERAS_RESNET_LAB_WEIGHTS", str(tmp_path / "keras" / "models")):
        assert part in message
    assert not any((tmp_path / "keras" / "models").glob("*")), "a failed download leaves nothing behind"


def test_the_pinned_file_is_found_in_the_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_RESNET_LAB_WEIGHTS", str(tmp_path))
    (tmp_path / "resnet34-b627a593.pth").write_bytes(b"x")
    monkeypatch.setitem(checkpoints.IMAGENET_FILES, "resnet34",
                        ("resnet34-b627a593.pth", "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"))
    assert checkpoints.imagenet_file("resnet34") == tmp_path / "resnet34-b627a593.pth"


# ---------------------------------------------------------------------------- training from weights

def test_train_normalizes_pretrained_inputs_with_imagenet_statistics_and_export_keeps_it(tmp_path):
    from sklearn.datasets import load_digits

    source = build_model("resnet18", input_shape=(8, 8, 1), num_classes=10, stem="small")
    save_torchvision_weights(source, tmp_path / "w.safetensors")
    digits = load_digits()
    x, y = (digits.images * 255 / 16).astype("uint8")[:200], digits.target[:200]
    result = lab.train("resnet18", (x, y), weights=str(tmp_path / "w.safetensors"), model_options={"stem": "small"},
                       epochs=1, batch_size=50, validation_split=0.2, run_dir=str(tmp_path / "run"), verbose="quiet",
                       reports=False, trainable_last=1)
    assert result.config.dataset_options["standardize"] == "imagenet"
    exported = lab.export(result.run_dir, export_dir=tmp_path / "export")
    served = lab.load_exported(exported)
    probabilities, _ = served.predict(x[:4, :, :, None])
    normalized = (x[:4, :, :, None] / 255.0 - 0.449) / 0.226
    expected = np.asarray(result.model(normalized.astype("float32"), training=False))
    expected = np.exp(expected) / np.exp(expected).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_phases_unfreeze_more_units_and_keep_the_optimizer(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.images * 255 / 16).astype("uint8")[:256], digits.target[:256]
    common = dict(batch_size=64, validation_split=0.25, verbose="quiet", reports=False)
    head_first = dict(epochs=1, trainable_last=1)
    models = [build_model("mnist_resnet", input_shape=(8, 8, 1), num_classes=10) for _ in range(2)]
    start = [{name: models[0].get_layer(name).kernel.numpy() for name in ("conv1", "predictions")}]
    start.append({name: models[1].get_layer(name).kernel.numpy() for name in ("conv1", "predictions")})
    first = lab.train(models[0], (x, y), run_dir=str(tmp_path / "a"), epochs=1, phases=[head_first], **common)
    both = lab.train(models[1], (x, y), run_dir=str(tmp_path / "b"), epochs=2,
                     phases=[head_first, dict(epochs=1, learning_rate=1e-4)], **common)
    np.testing.assert_array_equal(first.model.get_layer("conv1").kernel.numpy(), start[0]["conv1"])  # head only
    assert not np.allclose(first.model.get_layer("predictions").kernel.numpy(), start[0]["predictions"])
    assert not np.allclose(both.model.get_layer("conv1").kernel.numpy(), start[1]["conv1"])  # then everything
    assert int(both.model.optimizer.iterations.numpy()) == 2 * 3  # one optimizer, one schedule, across phases


def test_a_run_killed_after_its_head_phase_resumes_training_everything(tmp_path):
    import keras
    from sklearn.datasets import load_digits

    class Killed(Exception):
        pass

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Killed

    digits = load_digits()
    data = (digits.images * 255 / 16).astype("uint8")[:256], digits.target[:256]
    settings = dict(run_dir=str(tmp_path / "run"), epochs=3, batch_size=64, validation_split=0.25, verbose="quiet",
                    reports=False, phases=[dict(epochs=1, trainable_last=1), dict(epochs=2, learning_rate=1e-4)])
    with pytest.raises(Killed):
        lab.train("mnist_resnet", data, callbacks=[KillAfterFirstEpoch()], **settings)
    resumed = lab.train("mnist_resnet", data, **settings)
    assert len(resumed.history["loss"]) == 3
    assert all(layer.trainable for layer in resumed.model.layers)
    assert int(resumed.model.optimizer.iterations.numpy()) == 3 * 3  # the head phase's steps came back too


def test_transfer_from_a_network_trained_here_beats_training_from_scratch(tmp_path, data_dir):
    """Digits (8x8, gray, 10 classes) -> a few MNIST digits 0-4 (16x16, RGB, 5 classes)."""
    import tensorflow as tf

    common = dict(model_options={"stem": "small"}, verbose="quiet", reports=False)
    source = lab.train("resnet18", "digits", epochs=6, optimizer="sgd", learning_rate=0.05, nesterov=True,
                       schedule="onecycle", batch_size=64, validation_split=0.1, run_dir=str(tmp_path / "source"),
                       dataset_options={"augment": "affine"}, **common)
    for name in ("digits.safetensors", "digits.pth") if importlib.util.find_spec("torch") else ("digits.safetensors",):
        save_torchvision_weights(source.model, tmp_path / name)
    mnist = np.load(data_dir / "mnist.npz")

    def few(x, y, per_class, seed):
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(5)])
        rgb = tf.image.resize(np.repeat(x[keep][..., None], 3, -1), (16, 16)).numpy().round().astype("uint8")
        return rgb, y[keep]

    train, test = few(mnist["x_train"], mnist["y_train"], 20, 0), few(mnist["x_test"], mnist["y_test"], 100, 1)
    accuracy = {}
    for weights, trainable_last in ((None, None), ("digits.safetensors", 3)):
        result = lab.train("resnet18", train, test_data=test, run_dir=str(tmp_path / f"target-{weights}"),
                           weights=weights and str(tmp_path / weights), trainable_last=trainable_last,
                           dataset_options={"standardize": False}, epochs=6, optimizer="adam", learning_rate=1e-3,
                           schedule="onecycle", batch_size=32, validation_split=0.0, monitor="accuracy", **common)
        accuracy[weights] = result.metrics["accuracy"]
    print(f"transfer: source {source.metrics['accuracy']:.3f}, from scratch {accuracy[None]:.3f}, "
          f"fine-tuned {accuracy['digits.safetensors']:.3f}")
    # Five runs here (TensorFlow's CPU kernels are not bitwise deterministic): scratch 0.20-0.38,
    # fine-tuned 0.83-0.94 (README, Pretrained weights).
    assert accuracy["digits.safetensors"] > max(accuracy[None] + 0.15, 0.7)
    if (tmp_path / "digits.pth").exists():
        from_pth = build_model("resnet18", input_shape=(16, 16, 3), num_classes=5, stem="small",
                               weights=str(tmp_path / "digits.pth"))
        from_st = build_model("resnet18", input_shape=(16, 16, 3), num_classes=5, stem="small",
                              weights=str(tmp_path / "digits.safetensors"))
        for a, b in zip(from_pth.weights[:-2], from_st.weights[:-2]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_cli_takes_weights_and_trainable_last_flags():
    from keras_resnet_lab.cli import _overrides, build_parser

    args = build_parser().parse_args(["train", "--model", "resnet18", "--weights", "imagenet", "--trainable-last", "3"])
    assert _overrides(args) == {"weights": "imagenet", "trainable_last": 3}


def test_recipes_fine_tune_from_imagenet_in_two_phases():
    recipe = lab.get_recipe("report001-cats-dogs-resnet18").config()
    assert recipe.weights == "imagenet" and recipe.trainable_last_at(0) == 1 and recipe.trainable_last_at(1) is None
    report003 = lab.get_recipe("report003-cifar10-finetune").config()
    assert (report003.trainable_last, report003.optimizer, report003.learning_rate) == (5, "adam", 1e-3)
    assert lab.get_recipe("report001-cats-dogs-resnet18-scratch").config().weights is None
