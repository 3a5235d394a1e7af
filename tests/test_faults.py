"""Faults and bad input, one section per class of issue #19: nothing a user had is lost, nothing is
silently wrong, and each bad input ends in one clear line (CLI exit status 1) or a
ConfigError / DataError / LabError carrying the same message.

Every test writes the tiny data it needs; kill tests kill real subprocesses.
"""

import errno
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from PIL import Image

import keras_resnet_lab as lab
from keras_resnet_lab.cli import main

RUN = ["--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--steps-per-execution", "4", "--quiet"]


def cli(capsys, *args):
    """Runs the CLI in-process; returns (exit status, the lines it wrote to stderr that are ours)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith(("error:", "warning:", "Traceback"))]


def assert_one_error(status, lines, *fragments):
    assert status == 1, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def image_folder(root, counts, *, splits=("train", "test"), size=8):
    """`root/<split>/<class>/<i>.png`, each class a different grey so labels are visible in pixels."""
    for split in splits:
        for index, (name, count) in enumerate(counts.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                write_png(root / split / name / f"{i}.png", np.full((size, size), (25 * index + i) % 256, np.uint8))
    return root


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch lenet5 run on the digits, trained through the CLI, and its export."""
    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    assert main(["train", *RUN, "--run-dir", str(run)]) == 0
    export = lab.export(str(run), str(root / "exported"))
    return run, export


@pytest.fixture
def run_copy(finished_run, tmp_path):
    run, export = finished_run
    shutil.copytree(run, tmp_path / "run")
    shutil.copytree(export.parent, tmp_path / "exported")
    return tmp_path / "run", tmp_path / "exported" / export.name


# ----------------------------------------------------------------------- 1. data loss

def test_overwrite_never_deletes_a_folder_that_is_not_a_run(in_tmp, capsys):
    (in_tmp / "notes").mkdir()
    (in_tmp / "notes" / "thesis.tex").write_text("mine")
    (in_tmp / "todo.txt").write_text("mine too")
    status, lines = cli(capsys, "train", *RUN, "--run-dir", "notes", "--overwrite")
    assert_one_error(status, lines, "thesis.tex", "not a run")
    status, lines = cli(capsys, "train", *RUN, "--run-dir", ".", "--overwrite")
    assert_one_error(status, lines, "working, home or root folder")
    assert (in_tmp / "notes" / "thesis.tex").read_text() == "mine" and (in_tmp / "todo.txt").read_text() == "mine too"


def test_tune_overwrite_never_deletes_a_folder_that_is_not_a_search(in_tmp):
    (in_tmp / "tuning" / "mine").mkdir(parents=True)
    (in_tmp / "tuning" / "mine" / "results.csv").write_text("mine")
    with pytest.raises(lab.ConfigError, match="not a search of ours"):
        lab.tune("lenet5", "digits", directory="tuning", project_name="mine", overwrite=True, max_trials=1,
                 max_epochs=1, tuner="random", verbose="quiet")
    assert (in_tmp / "tuning" / "mine" / "results.csv").read_text() == "mine"


def test_replacing_an_export_version_is_never_seen_half_done(finished_run, tmp_path, monkeypatch):
    """A kill right after any deletion during `export --overwrite` still leaves a whole version 1."""
    from keras_resnet_lab.exporting import load_exported, verify_manifest

    run, _ = finished_run
    target = lab.export(str(run), str(tmp_path / "served"), version=1)
    real_rmtree, calls = shutil.rmtree, []

    def killed_after_deleting(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        if not calls:
            calls.append(path)
            raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(shutil, "rmtree", killed_after_deleting)
    with pytest.raises(KeyboardInterrupt):
        lab.export(str(run), str(tmp_path / "served"), version=1, overwrite=True)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    verify_manifest(target)
    assert load_exported(target).class_names == [str(i) for i in range(10)]


def test_an_export_never_replaces_a_folder_that_is_not_an_export(finished_run, tmp_path):
    run, _ = finished_run
    (tmp_path / "served" / "1").mkdir(parents=True)
    (tmp_path / "served" / "1" / "notes.txt").write_text("mine")
    with pytest.raises(lab.ConfigError, match="not an export"):
        lab.export(str(run), str(tmp_path / "served"), version=1, overwrite=True)
    assert (tmp_path / "served" / "1" / "notes.txt").read_text() == "mine"


def test_what_a_killed_extraction_left_is_removed_by_the_next(tmp_path):
    archive = tmp_path / "pets.zip"
    folder = image_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    shutil.make_archive(str(archive.with_suffix("")), "zip", folder)
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os
        from keras_resnet_lab.data import archives
        def die(archive, target, *args):
            (target / "half.png").write_bytes(b"half")
            os._exit(3)  # killed mid-extraction
        archives._extract_into = die
        archives.extract_archive({str(archive)!r}, {str(cache)!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 3, killed.stderr[-2000:]
    root = cache / "extracted"
    assert [p for p in root.iterdir() if p.name.startswith(".")], "the killed run should have left its staging folder"
    data = lab.load_dataset("image_folder", path=str(archive), cache_dir=str(cache))
    assert data.class_names == ["cat", "dog"]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------- 2. silently wrong data

def test_the_decoded_image_cache_follows_the_files(tmp_path):
    folder = image_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    cache = tmp_path / "cache"
    before = lab.load_dataset("image_folder", path=str(folder), cache_dir=str(cache))
    assert np.bincount(before.arrays["train"][1]).tolist() == [3, 3]
    shutil.move(folder / "train" / "cat" / "0.png", folder / "train" / "dog" / "9.png")  # relabelled, same count
    write_png(folder / "train" / "dog" / "1.png", np.full((8, 8), 255, np.uint8))  # new pixels, same name
    after = lab.load_dataset("image_folder", path=str(folder), cache_dir=str(cache))
    assert np.bincount(after.arrays["train"][1]).tolist() == [2, 4]
    assert after.arrays["train"][0].max() == 255


def test_a_cache_built_under_warn_does_not_bypass_on_bad_file_error(tmp_path):
    folder = image_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    (folder / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.png"):
        lab.load_dataset("image_folder", path=str(folder), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(lab.DataError, match="broken.png"):
        lab.load_dataset("image_folder", path=str(folder), cache_dir=str(tmp_path / "cache"), on_bad_file="error")


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from keras_resnet_lab.exporting import read_image

    folder = tmp_path / "deep"
    for split in ("train", "test"):
        for label, level in (("dark", 64), ("light", 192)):
            write_png(folder / split / label / "0.png", np.full((8, 8), level * 257, np.uint16))
    data = lab.load_dataset("image_folder", path=str(folder), cache_dir=str(tmp_path / "cache"), channels=1)
    assert sorted(np.unique(data.arrays["train"][0]).tolist()) == [64, 192]
    assert np.unique(read_image(folder / "test" / "dark" / "0.png")).tolist() == [64]


# ----------------------------------------------------------------------- 3. silently wrong settings

@pytest.mark.parametrize("settings, match", [
    (dict(schedule="step", step_gamma=-1.0), "step_gamma"),
    (dict(schedule="step", step_epochs=0), "step_epochs"),
    (dict(mixed_precision="no"), "mixed_precision"),
])
def test_a_setting_that_would_train_wrongly_is_refused(settings, match):
    with pytest.raises(lab.ConfigError, match=match):
        lab.TrainConfig(model="lenet5", dataset="digits", **settings).validate()


def test_a_tuner_choice_outside_the_settings_values_is_refused(in_tmp):
    with pytest.raises(lab.ConfigError, match="lion"):
        lab.tune("lenet5", "digits", search_space={"optimizer": ["adam", "lion"]}, max_trials=1, max_epochs=1,
                 tuner="random", verbose="quiet")
    assert not (in_tmp / "tuning").exists()


# ----------------------------------------------------------------------- 4. guards

def test_an_archive_that_expands_too_far_is_refused_unless_allowed(tmp_path, monkeypatch):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "test"):
            for name in ("a", "b"):
                zf.writestr(f"{split}/{name}/0.png", _png_bytes(np.full((8, 8), 9, np.uint8)))
        zf.writestr("train/a/padding.bin", bytes(20_000_000))  # 20 MB of zeros in ~20 KB
    with pytest.raises(lab.DataError, match="KERAS_RESNET_LAB_ARCHIVE_LIMITS"):
        lab.load_dataset("image_folder", path=str(archive), cache_dir=str(tmp_path / "cache"))
    assert not list((tmp_path / "cache" / "extracted").iterdir())
    monkeypatch.setenv("KERAS_RESNET_LAB_ARCHIVE_LIMITS", "max_ratio=5000")
    with pytest.warns(UserWarning, match="padding.bin"):
        lab.load_dataset("image_folder", path=str(archive), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage"])
def test_an_empty_or_garbled_manifest_verifies_nothing(run_copy, capsys, content):
    _, version = run_copy
    (version / "manifest.sha256").write_bytes(content)
    status, lines = cli(capsys, "predict", version, version / "assets")
    assert_one_error(status, lines, "manifest.sha256")


def test_a_runs_config_json_reruns_it(finished_run, capsys):
    run, _ = finished_run
    assert main(["train", "--config", str(run / "config.json")]) == 0
    assert f"run folder {run}" in capsys.readouterr().out


# ----------------------------------------------------------------------- 5. one line, not a traceback

@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "free some space"), (errno.EROFS, "read-only"), (errno.EACCES, "may write to"),
])
def test_disk_full_or_read_only_is_one_line(in_tmp, capsys, monkeypatch, code, words):
    real_replace = os.replace

    def failing_replace(source, target, *args, **kwargs):
        if "runs" in str(target):
            raise OSError(code, os.strerror(code), str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    status, lines = cli(capsys, "train", *RUN, "--run-dir", "runs/full")
    assert_one_error(status, lines, os.strerror(code), "runs/full", words)


def test_a_port_in_use_is_one_line(in_tmp, capsys, monkeypatch):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.setenv(name, "unset")  # restored after the test; the CLI sets them
    (in_tmp / "search.toml").write_text('max_trials = 1\nmax_epochs = 1\ntuner = "random"\n'
                                       '[train]\nmodel = "lenet5"\ndataset = "digits"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, lines = cli(capsys, "tune", "--config", "search.toml", "--role", "chief", "--oracle", f"127.0.0.1:{port}")
    assert_one_error(status, lines, f"127.0.0.1:{port}", "free port")


def test_malformed_toml_in_set_is_refused_not_read_as_a_string(in_tmp, capsys):
    status, lines = cli(capsys, "train", *RUN, "--set", "phases=[{epochs = 1}")
    assert_one_error(status, lines, "phases", "not a TOML value")
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("name, command", [
    ("identity.json", "train"), ("state.json", "train"), ("model.keras", "export"), ("data.json", "export"),
    ("checkpoints", "train"), ("config.json", "train --config"),
])
def test_a_corrupt_run_file_is_named_in_one_line(run_copy, capsys, name, command):
    run, _ = run_copy
    if name == "checkpoints":  # an unfinished run whose checkpoint was damaged
        state = json.loads((run / "state.json").read_text())
        state["finished"] = False
        (run / "state.json").write_text(json.dumps(state))
        name = state["checkpoint"]
    (run / name).write_bytes(b"\x00garbage{")
    args = {"train": ["train", *RUN, "--run-dir", run], "export": ["export", run, "--export-dir", run.parent / "x"],
            "train --config": ["train", "--config", run / name]}[command]
    status, lines = cli(capsys, *args)
    assert_one_error(status, lines, name)


def test_corrupt_export_metadata_and_missing_images_are_one_line(run_copy, tmp_path, capsys):
    run, version = run_copy
    status, lines = cli(capsys, "visualize", "activations", run, tmp_path / "missing.png")
    assert_one_error(status, lines, "missing.png")
    status, lines = cli(capsys, "predict", version, tmp_path / "missing.png", "--top-k", "0")
    assert_one_error(status, lines, "--top-k")


@pytest.mark.parametrize("case", ["truncated", "wrong shape", "2-D images", "label out of range", "length mismatch",
                                  "one class"])
def test_a_bad_mnist_file_is_refused_by_name(tmp_path, no_local_data, case):
    x, y = np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10
    arrays = {"x_train": x, "y_train": y, "x_test": x, "y_test": y}
    if case == "wrong shape":
        arrays["x_test"] = np.zeros((20, 14, 14), np.uint8)
    elif case == "2-D images":
        arrays["x_train"] = np.zeros((20, 784), np.uint8)
    elif case == "label out of range":
        arrays["y_train"] = y + 5
    elif case == "length mismatch":
        arrays["y_train"] = y[:15]
    elif case == "one class":
        arrays["y_train"] = np.zeros(20, np.int64)
    np.savez(tmp_path / "mnist.npz", **arrays)
    if case == "truncated":
        data = (tmp_path / "mnist.npz").read_bytes()
        (tmp_path / "mnist.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(lab.DataError, match="mnist.npz"):
        lab.load_dataset("mnist", data_dir=str(tmp_path), download=False)


@pytest.mark.parametrize("case", ["wrong shape", "missing key"])
def test_a_bad_cifar_batch_is_refused_by_name(tmp_path, no_local_data, case):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = np.zeros((10, 3072 if case != "wrong shape" else 1000), np.uint8)
    batch = {b"data": rows, b"labels": list(range(10))}
    if case == "missing key":
        del batch[b"labels"]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    with pytest.raises(lab.DataError, match="cifar-10-batches-py"):
        lab.load_dataset("cifar10", data_dir=str(tmp_path), download=False)


def test_an_unsupported_archive_is_named(tmp_path):
    (tmp_path / "pets.rar").write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(lab.DataError, match=r"pets.rar.*Extract it"):
        lab.load_dataset("image_folder", path=str(tmp_path / "pets.rar"))


# ----------------------------------------------------------------------- 6. degenerate data

@pytest.mark.parametrize("counts, test_counts, match", [
    ({"cat": 3}, None, "two or more"),
    ({"cat": 3, "dog": 0}, None, "empty class folder"),
    ({"cat": 3, "dog": 3}, {"cat": 1, "dog": 1, "fox": 1}, "fox not in the train split"),
])
def test_a_degenerate_image_folder_is_refused(tmp_path, counts, test_counts, match):
    folder = image_folder(tmp_path / "pets", counts, splits=("train",))
    image_folder(folder, test_counts or counts, splits=("test",))
    with pytest.raises(lab.DataError, match=match):
        lab.load_dataset("image_folder", path=str(folder), cache_dir=str(tmp_path / "cache"))


def test_a_validation_split_too_small_for_the_classes_is_one_line(tmp_path):
    folder = image_folder(tmp_path / "few", {str(c): 4 for c in range(10)})
    with pytest.raises(lab.DataError, match="validation_split=0.1"):
        lab.load_dataset("image_folder", path=str(folder), cache_dir=str(tmp_path / "cache"), validation_split=0.1)


# ----------------------------------------------------------------------- 7. tuning

def test_a_worker_without_a_chief_gives_up_with_the_fix(in_tmp):
    (in_tmp / "search.toml").write_text('max_trials = 1\nmax_epochs = 1\ntuner = "random"\n'
                                       '[train]\nmodel = "lenet5"\ndataset = "digits"\n')
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "KERAS_RESNET_LAB_CHIEF_WAIT": "2"}
    worker = subprocess.run([sys.executable, "-m", "keras_resnet_lab.cli", "tune", "--config", "search.toml",
                             "--role", "worker0", "--oracle", f"127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=90, env=env)
    assert worker.returncode == 1
    assert f"No tuning chief answers at 127.0.0.1:{port}" in worker.stderr.splitlines()[-1]


# ----------------------------------------------------------------------- 8. valid input accepted

def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_zips_from_python_and_from_macos_finder_load(tmp_path):
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # writestr: permission bits without a file type
        for split in ("train", "test"):
            for index, name in enumerate(("cat", "dog")):
                zf.writestr(f"pets/{split}/{name}/0.png", _png_bytes(np.full((8, 8), 50 * index, np.uint8)))
                zf.writestr(f"__MACOSX/pets/{split}/{name}/._0.png", b"\x00\x05\x16\x07resource fork")
        zf.writestr("pets/train/cat/._1.png", b"\x00\x05\x16\x07resource fork")
    data = lab.load_dataset("image_folder", path=str(archive), cache_dir=str(tmp_path / "cache"), on_bad_file="error")
    assert data.class_names == ["cat", "dog"] and data.num_examples == {"train": 2, "test": 2}


# ----------------------------------------------------------------------- 9. smaller

def test_the_state_on_disk_always_names_best_weights_that_exist(tmp_path, monkeypatch):
    from keras_resnet_lab.training.run_folder import RunFolder

    saves, real_save = [], RunFolder.save_state

    def killed_on_second_save(self, state):
        saves.append(state.epochs_done)
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed after epoch 2's weights, before its state
        real_save(self, state)

    monkeypatch.setattr(RunFolder, "save_state", killed_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        lab.train("lenet5", "digits", epochs=3, run_dir=str(tmp_path / "run"), verbose="quiet", reports=False,
                  steps_per_execution=4, learning_rate=3e-3)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["best_epoch"] == 1
    assert state["best_checkpoint"].endswith("best-epoch-0001.weights.h5")
    assert (tmp_path / "run" / state["best_checkpoint"]).is_file()
    monkeypatch.setattr(RunFolder, "save_state", real_save)
    lab.train("lenet5", "digits", epochs=3, run_dir=str(tmp_path / "run"), verbose="quiet", reports=False,
              steps_per_execution=4, learning_rate=3e-3)  # resumes; what the kill left behind is cleared
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert sorted(f"checkpoints/{p.name}" for p in (tmp_path / "run" / "checkpoints").iterdir()) == sorted(
        {state["checkpoint"], state["best_checkpoint"]})


RESUME = """
import os, sys, keras, numpy as np
import keras_resnet_lab as lab

class Die(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0 and os.environ.get("DIE"):
            os._exit(3)

result = lab.train("mnist_resnet", "digits", epochs=2, run_dir=sys.argv[1], verbose="quiet", reports=False,
                   model_options={"num_blocks": 1}, dataset_options={"augment": ["affine"]}, callbacks=[Die()])
np.save(sys.argv[2], np.concatenate([np.ravel(w) for w in result.model.get_weights()]))
"""


def test_a_resumed_run_trains_like_an_uninterrupted_one(tmp_path):
    """Epoch 2 after a kill sees epoch 2's shuffle order and augmentations, not epoch 1's again."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME)

    def run(*args, die=False):
        env = {**os.environ, **({"DIE": "1"} if die else {})}
        return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=300)

    straight = run(tmp_path / "straight", tmp_path / "straight.npy")
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert run(tmp_path / "resumed", tmp_path / "unused.npy", die=True).returncode == 3
    resumed = run(tmp_path / "resumed", tmp_path / "resumed.npy")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "straight.npy"), atol=1e-6)


def test_run_and_export_files_follow_the_umask(finished_run):
    run, export = finished_run
    mask = os.umask(0)
    os.umask(mask)
    for path in (run / "model.keras", run / "state.json", export / "saved_model.pb"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE(export.stat().st_mode) == 0o777 & ~mask


def test_a_resnet_stem_that_would_shrink_tiny_inputs_to_nothing_is_refused():
    with pytest.raises(lab.ConfigError, match="stem='small'"):
        lab.build_model("resnet18", input_shape=(8, 8, 1), num_classes=10)
    assert lab.build_model("resnet18", input_shape=(8, 8, 1), num_classes=10, stem="small").count_params() > 0


def test_a_diverged_step_is_named_within_the_epoch(tmp_path):
    """With steps_per_execution 16 and 11 steps an epoch, Keras reports 'batch 16'; the error names real steps."""
    import re

    with pytest.raises(lab.TrainingDiverged) as raised:
        lab.train("mnist_resnet", "digits", epochs=1, run_dir=str(tmp_path / "run"), verbose="quiet", reports=False,
                  optimizer="sgd", learning_rate=1e12, momentum=0.0, steps_per_execution=16,
                  model_options={"num_blocks": 1})
    steps = re.search(r"at epoch 1, step (\d+)(?:-(\d+))?;", str(raised.value))
    assert steps, str(raised.value)
    assert all(int(s) <= 11 for s in steps.groups() if s)  # 1,293 training digits in batches of 128


def test_a_run_from_before_named_best_checkpoints_keeps_its_best_weights(tmp_path):
    from keras_resnet_lab.training.run_folder import LEGACY_BEST, RunFolder

    folder = RunFolder(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / LEGACY_BEST).write_bytes(b"weights")
    (tmp_path / "state.json").write_text(json.dumps({"epochs_done": 2, "best": 0.9, "best_epoch": 1}))
    assert folder.load_state().best_checkpoint == LEGACY_BEST


def test_plain_words_and_paths_in_set_stay_strings(capsys):
    from keras_resnet_lab.cli import _parse_value

    for text in ("adam", "~/data", "data/my pets", "data/cats+dogs.zip", "run@1"):
        assert _parse_value("x", text) == text
    assert _parse_value("x", "[1, 2]") == [1, 2] and _parse_value("x", "0.5") == 0.5
    with pytest.raises(lab.ConfigError, match="column 7"):  # the 3, counted in what the user typed
        _parse_value("x", "[1, 2 3]")


@pytest.mark.parametrize("text", ["max_bytes=inf", "max_members=nan", "max_ratio=-1", "size=3"])
def test_archive_limits_from_the_environment_are_checked(monkeypatch, text):
    from keras_resnet_lab.data.archives import ArchiveLimits

    monkeypatch.setenv("KERAS_RESNET_LAB_ARCHIVE_LIMITS", text)
    with pytest.raises(lab.DataError, match="KERAS_RESNET_LAB_ARCHIVE_LIMITS"):
        ArchiveLimits.from_env()
    monkeypatch.setenv("KERAS_RESNET_LAB_ARCHIVE_LIMITS", "max_ratio=1000,")
    assert ArchiveLimits.from_env().max_ratio == 1000
