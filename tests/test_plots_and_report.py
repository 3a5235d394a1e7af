import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_resnet_lab as lab
from keras_resnet_lab.cli import main
from keras_resnet_lab.models import flops_per_image
from keras_resnet_lab.plots import default_activation_layers, plot_activations


def assert_real_image(path, min_size=(100, 100)):
    """Decodes as a PNG of a sensible size and is not blank (not pixel-exact on purpose)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("L"), np.float32)
    assert pixels.std() > 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots") / "run"
    return lab.train("mnist_resnet", "digits", epochs=1, run_dir=str(folder), verbose="quiet",
                     model_options={"num_blocks": (1, 1)}, steps_per_execution=4)


def test_a_run_writes_every_figure_and_a_report(run):
    plots = run.run_dir / "plots"
    for name in ("curves.png", "confusion_matrix.png", "samples.png", "mistakes.png"):
        assert_real_image(plots / name)
    grids = sorted(p.name for p in (plots / "activations").glob("*.png"))
    assert grids == ["activations_01_stage1_block1_out.png", "activations_02_stage2_block1_out.png"]
    markdown = (run.run_dir / "report.md").read_text()
    assert "Metrics (test split)" in markdown and "| accuracy |" in markdown and "FLOPs per image" in markdown and "plots/curves.png" in markdown
    assert "mnist_resnet (num_blocks=(1, 1)) reached " in markdown and "after 1 epoch;" in markdown and "commonest mistake is '" in markdown  # the generated conclusion
    assert "keras 3." in markdown and "| examples (train / validation / test) | 1,293 / 144 / 360 |" in markdown
    per_class = [line for line in markdown.splitlines() if line.startswith("| 7 |")]
    assert len(per_class) == 1 and per_class[0].endswith("| 36 |")  # precision, recall, F1, images of class 7
    html = (run.run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "src='plots/" not in html  # self-contained


def test_activation_layers_follow_the_zoo_names():
    resnet = lab.build_model("resnet18", input_shape=(16, 16, 3), stem="small", num_classes=10)
    assert default_activation_layers(resnet) == ["stem_act"] + [f"stage{i}_block2_out" for i in range(1, 5)]
    assert len(default_activation_layers(resnet, per="block")) == 9
    assert default_activation_layers(lab.build_model("baseline_cnn")) == ["relu1", "relu2"]


def test_activation_grid_per_stage_and_unknown_layer(tmp_path):
    model = lab.build_model("cifar_resnet20", input_shape=(16, 16, 3), num_classes=10)
    paths = plot_activations(model, np.random.default_rng(0).random((16, 16, 3)), path=tmp_path)
    assert [p.name for p in paths] == ["activations_01_stem_act.png", "activations_02_stage1_block3_out.png",
                                       "activations_03_stage2_block3_out.png", "activations_04_stage3_block3_out.png"]
    assert sorted(paths) == paths  # numbered in network order: the stem first, as the report shows them
    for path in paths:
        assert_real_image(path)
    with pytest.raises(ValueError, match="no layer.*nope"):
        plot_activations(model, np.zeros((16, 16, 3)), layers=["nope"], path=tmp_path)


def test_flops_per_image_match_the_published_figures():
    assert flops_per_image(lab.build_model("resnet50")) == pytest.approx(8.18e9, rel=0.01)  # 4.09 GMACs
    assert flops_per_image(lab.build_model("resnet18")) == pytest.approx(3.63e9, rel=0.01)
    assert flops_per_image(lab.build_model("baseline_cnn")) == 2 * (25 * 10 * 24 * 24 + 250 * 20 * 8 * 8 + 320 * 50 + 500)


def test_visualize_cli_writes_one_grid_per_stage(run, tmp_path, capsys):
    digit = lab.load_dataset("digits").arrays["test"][0][3, ..., 0]
    Image.fromarray(digit).resize((28, 28)).save(tmp_path / "digit.png")  # another size: converted
    assert main(["visualize", "activations", str(run.run_dir), str(tmp_path / "digit.png"), "--out", str(tmp_path / "grids")]) == 0
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == [
        "activations_01_stage1_block1_out.png", "activations_02_stage2_block1_out.png"]


def test_importing_the_package_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import keras_resnet_lab, keras_resnet_lab.plots; "
            "print(matplotlib.get_backend())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "svg", done.stderr[-1000:]


def test_curves_mark_the_best_epoch_and_a_spike_does_not_flatten_the_loss():
    from keras_resnet_lab.plots import curves_figure

    history = {"loss": [2.0, 1.0, 0.5, 90.0, 0.4], "val_loss": [2.1, 1.2, 0.6, 80.0, 0.7],
               "accuracy": [0.3, 0.6, 0.8, 0.1, 0.85], "val_accuracy": [0.3, 0.5, 0.8, 0.1, 0.7]}
    figure = curves_figure({"run": history}, best_epochs={"run": 3})
    loss_axis, accuracy_axis = figure.axes[:2]
    assert loss_axis.get_yscale() == "log"
    marks = [line for line in accuracy_axis.lines if list(line.get_xdata()) == [3, 3]]
    assert len(marks) == 1 and "best epoch (3)" in marks[0].get_label()
    calm = curves_figure({"run": {"loss": [2.0, 1.0, 0.5]}})
    assert calm.axes[0].get_yscale() == "linear"


def test_activation_grids_share_one_colour_scale_and_1x1_maps_are_bars():
    from keras_resnet_lab.plots import activation_figure

    rng = np.random.default_rng(0)
    grid = activation_figure("stage1_block2_out", rng.normal(size=(8, 8, 20)) * np.arange(20), np.zeros((8, 8, 1)))
    limits = {image.get_clim() for axis in grid.axes for image in axis.images[:1] if axis.get_title() != "input"}
    assert len(limits) == 1  # every map on the same scale, so maps compare
    bars = activation_figure("stage4_block2_out", rng.normal(size=(1, 1, 512)), np.zeros((8, 8, 1)))
    assert len(bars.axes[1].patches) == 64 and "one value per channel" in bars.texts[0].get_text()


def test_a_comparison_is_concluded_on_validation_accuracy_not_test():
    from types import SimpleNamespace

    from keras_resnet_lab.training.report import comparison_conclusion

    def result(val, test, parameters):
        return SimpleNamespace(history={"val_accuracy": val, "seconds": [1.0] * len(val)},
                               metrics={"split": "test", "accuracy": test, "parameters": {"trainable": parameters}})

    cnn, resnet = result([0.90, 0.97], 0.990, 21_840), result([0.96, 0.98], 0.970, 11_000_000)
    text = comparison_conclusion([cnn, resnet], ["cnn", "resnet18"])
    assert text.startswith("Chosen on validation accuracy (98.00%): resnet18. On the test split, read once at the "
                           "end, it scores 97.00%.")  # the better test score of the CNN does not choose it
    assert "The smallest, cnn (21,840 trainable parameters, 504x fewer), scores 99.00% (2.00 points above)." in text


def test_reports_name_a_model_with_the_options_that_shape_it():
    from keras_resnet_lab.models import model_label
    from keras_resnet_lab.training.recipes import get_recipe
    from keras_resnet_lab.training.report import run_title

    assert model_label("resnet18") == "resnet18" and model_label("resnet18", {}) == "resnet18"
    assert model_label("baseline_cnn", {"dense_dropout": 0.2, "conv_dropout": 0.2}) == \
        "baseline_cnn (conv_dropout=0.2, dense_dropout=0.2)"
    assert run_title(get_recipe("depth-cifar10-resnet32").config()) == \
        "depth-cifar10-resnet32: cifar_resnet (depth=32) on cifar10"  # not four reports titled "cifar_resnet"
    assert run_title(lab.TrainConfig(model="lenet5", dataset="digits")) == "lenet5 on digits"
