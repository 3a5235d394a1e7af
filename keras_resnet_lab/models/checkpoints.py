"""PyTorch checkpoint files as NumPy arrays: read without running their code, written for torch users.

- `.safetensors` (timm, torchvision, Hugging Face): read with the `safetensors` package's NumPy API.
- `.pth` / `.pt` / `.bin` (`torch.save`'s zip format): a pickle, which could run any code it names.
  `read_checkpoint` unpickles it with a reader that allows only tensors and plain containers
  (what `torch.load(weights_only=True)` allows for a state dict), without torch installed.
- `"imagenet"` files are downloaded once into the Keras cache and checked against pinned SHA-256s.
"""

import collections
import importlib
import importlib.util
import os
import pickle
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, WeightsError
from ..files import CHECKPOINT_SUFFIXES, atomic_path, sha256_once

WEIGHTS_ENV = "KERAS_RESNET_LAB_WEIGHTS"  # a folder searched first for the "imagenet" files
WEIGHTS_URL_ROOT = "https://download.pytorch.org/models/"
DOWNLOAD_TIMEOUT_S = 15

# torchvision's IMAGENET1K_V1 weights. Its file names carry the first 8 hex digits of the file's
# SHA-256; the full digest is pinned where it was published alongside (resnet18, resnet50).
IMAGENET_FILES = {
    "resnet18": ("resnet18-f37072fd.pth", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"),
    "resnet34": ("resnet34-b627a593.pth", "b627a593"),
    "resnet50": ("resnet50-0676ba61.pth", "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"),
    "resnet101": ("resnet101-63fe2227.pth", "63fe2227"),
    "resnet152": ("resnet152-394f9c45.pth", "394f9c45"),
}

# torch storage class -> NumPy dtype; bfloat16 is decoded by hand (NumPy has no such type).
_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


# ---------------------------------------------------------------------------- reading

def read_checkpoint(path):
    """{name: float32 or integer NumPy array} from a `.pth` state dict or a `.safetensors` file.

    Half-precision tensors (float16, bfloat16) are converted to float32. A checkpoint that
    wraps its state dict (`{"state_dict": ...}` or `{"model": ...}`) is unwrapped, and a
    `module.` prefix (from `DataParallel`) is dropped.

    Raises:
        WeightsError: a missing, unreadable or unsafe file (one whose pickle names anything but
            tensors and plain containers; nothing from it is run).
    """
    path = checked_path(path)
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_zip(path)
    return _float32(_unwrap(state, path), path)


def checked_path(path):
    """`path` as a Path, refused unless it is an existing checkpoint file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist. Give a .pth or .safetensors file, or weights='imagenet'.")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise WeightsError(f"Weights file {path} must end in {', '.join(CHECKPOINT_SUFFIXES)} (a PyTorch state dict "
                           f"or a safetensors file).")
    return path


def _read_safetensors(path):
    importlib.import_module("ml_dtypes")  # Keras's own dependency: it teaches NumPy bfloat16
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except TypeError as error:  # a dtype NumPy lacks, e.g. float8
        raise WeightsError(f"{path} holds tensors NumPy cannot read ({error}); save them as float32 "
                           f"(tensor.float()).") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file ({error}).") from None


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Unpickles a `torch.save` state dict: tensors, storages and plain containers, nothing else."""

    def __init__(self, file, archive, prefix, path):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda tensor, requires_grad, hooks, *rest: tensor
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        raise WeightsError(
            f"Refused {self.path}: its pickle asks for {module}.{name}, which is not a tensor or a plain container, "
            f"so loading it could run code. Nothing from it was run. Load only checkpoints you trust; a state dict "
            f"saved with torch.save(model.state_dict(), ...) or a .safetensors file loads."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError(f"Refused {self.path}: unknown persistent object {pid!r} in its pickle.")
        dtype, key = pid[1], pid[2]
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        if isinstance(dtype, str):  # bfloat16: the high half of a float32
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype)


def _rebuild_tensor(storage, offset, size, stride, *rest):
    item = storage.itemsize
    if not size:
        return np.array(storage[offset]).copy()
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=[s * item for s in stride])
    return np.array(view)


def _read_torch_zip(path):
    if not zipfile.is_zipfile(path):
        if _torch_available():  # the legacy (pre-1.6) format: torch's own safe loader reads it
            return _torch_weights_only(path)
        raise WeightsError(f"{path} is not a zip-format PyTorch checkpoint (torch.save since PyTorch 1.6). Re-save it "
                           f"with torch.save(state_dict, path), or install torch to read the legacy format.")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise WeightsError(f"{path} is a zip file but not a PyTorch checkpoint (no single data.pkl).")
            prefix = pickles[0].rsplit("/", 1)[0]
            if archive.namelist().count(f"{prefix}/byteorder") and archive.read(f"{prefix}/byteorder") != b"little":
                raise WeightsError(f"{path} was saved on a big-endian machine; re-save it on a little-endian one.")
            with archive.open(pickles[0]) as file:
                return _TensorOnlyUnpickler(file, archive, prefix, path).load()
    except WeightsError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError, ValueError, TypeError) as error:
        raise WeightsError(f"{path} is a damaged PyTorch checkpoint ({error}); download or save it again.") from None


def _torch_available():
    return importlib.util.find_spec("torch") is not None


def _torch_weights_only(path):
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for unsafe or damaged files
        raise WeightsError(f"torch.load(weights_only=True) refused {path}: {error}") from None
    return {key: value.float().numpy() if value.is_floating_point() else value.numpy()
            for key, value in _unwrap(state, path).items()}


def _unwrap(state, path):
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _float32(state, path):
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        if value.dtype != np.float32 and (np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"):
            state[key] = value.astype(np.float32)
    return state


# ---------------------------------------------------------------------------- writing

def write_checkpoint(state, path):
    """Writes {name: NumPy array} as `.safetensors` (always) or `.pth` (with torch installed), atomically."""
    path = Path(path).expanduser()
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ConfigError(f"Checkpoint path {path} must end in .safetensors or .pth.")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))
        elif _torch_available():
            import torch

            torch.save(collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state.items()), tmp)
        else:
            raise ConfigError(f"Writing {path.name} needs torch (pip install torch); .safetensors needs nothing more.")
    return path


# ---------------------------------------------------------------------------- the "imagenet" files

def imagenet_file(model_name):
    """The path of `model_name`'s torchvision ImageNet checkpoint, downloaded and verified if needed.

    Looked for, in order, in `$KERAS_RESNET_LAB_WEIGHTS` and the Keras cache (`~/.keras/models`);
    downloaded into the cache otherwise. Every file is checked against its pinned SHA-256.
    """
    if model_name not in IMAGENET_FILES:
        raise ConfigError(f"weights='imagenet' exists for {', '.join(IMAGENET_FILES)}; {model_name!r} has none. "
                          f"Use weights=None, or a checkpoint path of your own.")
    filename, digest = IMAGENET_FILES[model_name]
    folders = [Path(os.environ[WEIGHTS_ENV]).expanduser()] if os.environ.get(WEIGHTS_ENV) else []
    cache = _keras_cache() / "models"
    for folder in [*folders, cache]:
        if (folder / filename).is_file():
            return _verified(folder / filename, digest, downloaded=False)
    return _verified(_download(filename, digest, cache), digest, downloaded=True)


def _keras_cache():
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()


def _verified(path, digest, *, downloaded):
    actual = sha256_once(path)  # once per process: checked before the data loads, again per tuner trial
    if actual.startswith(digest):
        return path
    if downloaded:  # our own download: remove it so that the next call fetches it again
        path.unlink(missing_ok=True)
    raise WeightsError(f"{path} has SHA-256 {actual}, but {path.name} must have {digest}"
                       f"{'...' if len(digest) < 64 else ''}: the file is damaged or not the published one. "
                       f"{'It was removed; try again.' if downloaded else 'Delete it, or download it again.'}")


def _download(filename, digest, cache):
    url = WEIGHTS_URL_ROOT + filename
    target = cache / filename
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, atomic_path(target) as tmp:
            _copy_with_progress(response, tmp, int(response.headers.get("Content-Length") or 0), filename)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise WeightsError(
            f"Cannot download {filename} from {url} ({reason}). Download it on a machine that is online (SHA-256 "
            f"{digest}{'...' if len(digest) < 64 else ''}) and put it in {cache} or in a folder named by "
            f"${WEIGHTS_ENV}."
        ) from None
    return target


def _copy_with_progress(response, path, total, filename):
    from keras.utils import Progbar

    print(f"Downloading {filename}", flush=True)
    progress = Progbar(total or None, unit_name="B", verbose=1 if sys.stdout.isatty() else 0)
    with open(path, "wb") as file:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            file.write(chunk)
            progress.add(len(chunk))
