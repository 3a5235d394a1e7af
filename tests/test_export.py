import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import keras_resnet_lab as lab
from keras_resnet_lab.cli import main
from keras_resnet_lab.training.evaluation import predict_labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained briefly on the digits (accuracy is beside the point here)."""
    run_dir = tmp_path_factory.mktemp("run") / "lenet"
    return lab.train("lenet5", "digits", epochs=1, run_dir=str(run_dir), verbose="quiet",
                     dataset_options={"standardize": True}, steps_per_execution=4)


def test_export_reload_parity_and_metadata(trained, tmp_path):
    path = lab.export(trained.run_dir, tmp_path / "lenet")
    assert path == tmp_path / "lenet" / "1"
    for name in ("saved_model.pb", "assets/metadata.json", "manifest.sha256"):
        assert (path / name).is_file()
    exported = lab.load_exported(tmp_path / "lenet")
    assert exported.class_names == [str(i) for i in range(10)]
    data = lab.load_dataset("digits", standardize=True, validation_split=0.1)  # as the run saw it
    x, y = data.arrays["test"]
    probabilities, classes = exported.predict(x)
    _, _, keras_probabilities = predict_labels(trained.model, data.test)
    np.testing.assert_allclose(probabilities, keras_probabilities, atol=1e-5)
    assert (classes == y).mean() == pytest.approx(trained.metrics["accuracy"])


def test_other_sizes_and_channel_counts_are_converted(trained, tmp_path):
    exported = lab.load_exported(lab.export(trained.run_dir, tmp_path / "m"))
    digits = lab.load_dataset("digits").arrays["test"][0][:4]
    base, _ = exported.predict(digits)
    rgb, _ = exported.predict(np.repeat(digits, 3, axis=-1))
    rgba, _ = exported.predict(np.concatenate([np.repeat(digits, 3, -1), np.full_like(digits, 255)], -1))
    big = np.stack([np.asarray(Image.fromarray(d[..., 0]).resize((32, 32), Image.NEAREST)) for d in digits])[..., None]
    bigger, _ = exported.predict(big)
    np.testing.assert_allclose(rgb, base, atol=1e-5)
    np.testing.assert_allclose(rgba, base, atol=1e-5)
    assert bigger.shape == (4, 10) and np.allclose(bigger.sum(axis=1), 1, atol=1e-5)


def test_versions_count_up_and_are_never_overwritten(trained, tmp_path):
    assert lab.export(trained.run_dir, tmp_path / "m").name == "1"
    assert lab.export(trained.run_dir, tmp_path / "m").name == "2"
    with pytest.raises(ValueError, match="2 already exists.*overwrite"):
        lab.export(trained.run_dir, tmp_path / "m", version=2)
    assert lab.export(trained.run_dir, tmp_path / "m", version=2, overwrite=True).name == "2"


def test_a_failed_export_leaves_no_version_and_keeps_the_earlier_ones(trained, tmp_path):
    lab.export(trained.run_dir, tmp_path / "m")

    def fail(staging):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        lab.export(trained.run_dir, tmp_path / "m", _before_rename=fail)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]
    lab.load_exported(tmp_path / "m" / "1")


def test_a_tampered_or_truncated_export_is_refused(trained, tmp_path):
    path = lab.export(trained.run_dir, tmp_path / "m")
    meta = path / "assets" / "metadata.json"
    meta.write_text(meta.read_text().replace('"0"', '"zero"'))
    with pytest.raises(lab.LabError, match="metadata.json does not match its checksum"):
        lab.load_exported(path)
    path = lab.export(trained.run_dir, tmp_path / "m")
    next(path.glob("variables/variables.data*")).unlink()
    with pytest.raises(lab.LabError, match="variables.data.* is missing"):
        lab.load_exported(path)


def test_predict_cli_on_png_and_jpeg_with_a_corrupt_file(trained, tmp_path, capsys):
    export_dir = tmp_path / "saved"
    assert main(["export", str(trained.run_dir), "--export-dir", str(export_dir)]) == 0
    folder = tmp_path / "images"
    folder.mkdir()
    digits = lab.load_dataset("digits").arrays["test"][0][:3, ..., 0]
    Image.fromarray(digits[0]).save(folder / "a.png")
    Image.fromarray(digits[1]).resize((28, 28)).convert("RGB").save(folder / "b.jpg")
    Image.fromarray(digits[2]).resize((40, 30)).save(folder / "c.png")
    (folder / "d.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["predict", str(export_dir), str(folder), "--format", "json", "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.jpg", "c.png"]
    assert all(len(r["top"]) == 2 and 0 <= r["top"][0][1] <= 1 for r in rows)
    assert "d.png" in captured.err
    assert main(["predict", str(export_dir), str(folder / "a.png")]) == 0
    assert "a.png" in capsys.readouterr().out


PARITY_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf  # the only import: no keras_resnet_lab, no Keras model code

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
data = np.load(sys.argv[2])
out = serve(images=tf.constant(data["x"]))
np.save(sys.argv[3], out["probabilities"].numpy())
print("ACCURACY", float((out["class_index"].numpy() == data["y"]).mean()))
print("MODULES", "keras_resnet_lab" in sys.modules)
"""


@pytest.mark.slow
def test_a_tensorflow_only_process_reproduces_the_keras_model(trained, tmp_path):
    path = lab.export(trained.run_dir, tmp_path / "m")
    data = lab.load_dataset("digits", standardize=True, validation_split=0.1)  # as the run saw it
    x, y = data.arrays["test"]
    np.savez(tmp_path / "test.npz", x=x, y=y)
    (tmp_path / "parity.py").write_text(textwrap.dedent(PARITY_SCRIPT))
    done = subprocess.run([sys.executable, str(tmp_path / "parity.py"), str(path), str(tmp_path / "test.npz"),
                           str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ACCURACY {trained.metrics['accuracy']}" in done.stdout and "MODULES False" in done.stdout
    _, _, keras_probabilities = predict_labels(trained.model, data.test)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), keras_probabilities, atol=1e-5)


def test_test_time_flip_re_evaluates_a_finished_run_and_is_exported_as_evaluated(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "flipped"
    shutil.copytree(trained.run_dir, run_dir)
    history = (run_dir / "history.csv").read_text()
    flipped = lab.train("lenet5", "digits", epochs=1, run_dir=str(run_dir), verbose="quiet",
                        dataset_options={"standardize": True}, steps_per_execution=4, test_time_flip=True)
    assert (run_dir / "history.csv").read_text() == history  # evaluated again, not trained again
    assert flipped.metrics["test_time_flip"] is True
    assert flipped.metrics["without_test_time_flip"]["accuracy"] == pytest.approx(trained.metrics["accuracy"])
    data = lab.load_dataset("digits", standardize=True, validation_split=0.1)
    _, _, mirrored = predict_labels(trained.model, data.test, test_time_flip=True)
    _, _, plain = predict_labels(trained.model, data.test)
    assert np.abs(mirrored - plain).max() > 1e-3  # the digits are not symmetric: the flip changes the output
    y = data.arrays["test"][1]
    assert flipped.metrics["accuracy"] == pytest.approx((mirrored.argmax(axis=1) == y).mean())
    assert f"the model alone scores {trained.metrics['accuracy']:.2%}" in (run_dir / "report.md").read_text()

    exported = lab.load_exported(lab.export(str(run_dir), tmp_path / "export"))
    assert exported.metadata["test_time_flip"] is True
    probabilities, _ = exported.predict(data.arrays["test"][0])
    np.testing.assert_allclose(probabilities, mirrored, atol=1e-5)
