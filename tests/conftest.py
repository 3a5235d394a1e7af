import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--data-dir", default=None, help="folder with mnist.npz, cifar10-jpeg.tar.gz, cats_vs_dogs.tar.gz")


@pytest.fixture(scope="session")
def data_dir(request):
    """The real datasets: --data-dir or $KERAS_RESNET_LAB_DATA; tests that need them skip without."""
    folder = request.config.getoption("--data-dir") or os.environ.get("KERAS_RESNET_LAB_DATA")
    if not folder or not (Path(folder) / "mnist.npz").is_file():
        pytest.skip("real data not available: pass --data-dir or set KERAS_RESNET_LAB_DATA")
    return Path(folder)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """A shared cache for decoded real data; tests never depend on the user's own environment."""
    if "KERAS_RESNET_LAB_CACHE" not in os.environ:
        monkeypatch.setenv("KERAS_RESNET_LAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def no_local_data(monkeypatch):
    monkeypatch.delenv("KERAS_RESNET_LAB_DATA", raising=False)


def pytest_collection_modifyitems(config, items):
    """Slow tests are opt-in (keras-hub's pattern): `pytest -m slow` runs them, plain `pytest` skips them."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
