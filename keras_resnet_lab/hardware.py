"""The CPU this process runs on, and TensorFlow's fast oneDNN kernels on every x86 family.

TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with AVX-512 VNNI/BF16 or
AMX; on AVX2 CPUs (most AMD servers and laptops, older Intel) it falls back to kernels that
train our CNNs 2-3x slower. It reads `TF_ENABLE_ONEDNN_OPTS` once, when it is first imported,
so `enable_fast_kernels` (called when the package is imported, before TensorFlow) sets it to
"1" unless the user has set it. Imported after TensorFlow, the package cannot change it;
`check_fast_kernels` then warns once, naming the fix.

This module imports no framework.
"""

import os
import platform
import sys
import warnings
from pathlib import Path

from .version import __version__

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# The ISA flags that decide which kernels run (names as /proc/cpuinfo writes them).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
# Set by `enable_fast_kernels`: "package" (we set it), "user" (theirs), "tensorflow first", "not x86".
fast_kernels_source = None
_warned = False


def _is_x86(machine=None):
    return (machine or platform.machine()).lower() in ("x86_64", "amd64")


def cpu_info():
    """{"model", "isa" (the ISA_FLAGS present), "cores", "machine"} of this machine.

    Example:
        >>> cpu_info()["isa"]
        ['avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16']
    """
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "x86_64", ""):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count(),
            "machine": platform.machine()}


def environment(backend=None, devices=None):
    """When and where a figure was measured: date, versions, backend, CPU and accelerators."""
    import datetime
    from importlib import metadata

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    info = cpu_info()
    versions = {"keras-resnet-lab": __version__}
    versions.update({p: version(p) for p in ("keras", "tensorflow", "jax", "numpy") if version(p)})
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(), "versions": versions,
            "backend": backend, "cpu": info["model"], "cores": info["cores"], "cpu_family": cpu_family(info),
            "isa": info["isa"], "devices": devices}


def cpu_family(info=None):
    """"avx512" (TensorFlow's oneDNN default is on), "avx2", "older x86" or "other" (not x86)."""
    info = info or cpu_info()
    if not _is_x86(info["machine"]):
        return "other"
    isa = set(info["isa"])
    if isa & {"avx512_vnni", "avx512_bf16", "amx_tile"}:
        return "avx512"
    return "avx2" if "avx2" in isa else "older x86"


def enable_fast_kernels():
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` on x86 unless the user set it or TensorFlow is already loaded."""
    global fast_kernels_source
    if ONEDNN_ENV in os.environ:
        fast_kernels_source = "user"
    elif "tensorflow" in sys.modules:
        fast_kernels_source = "tensorflow first"
    elif not _is_x86():
        fast_kernels_source = "not x86"
    else:
        os.environ[ONEDNN_ENV] = "1"
        fast_kernels_source = "package"
    return fast_kernels_source


def onednn_enabled():
    """Whether this process's TensorFlow runs its oneDNN kernels (imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def check_fast_kernels():
    """Warns once when TensorFlow runs without oneDNN on x86 because it was imported first.

    A user's explicit `TF_ENABLE_ONEDNN_OPTS=0` is respected without a word.
    """
    global _warned
    if _warned or fast_kernels_source != "tensorflow first" or os.environ.get(ONEDNN_ENV) == "0":
        return
    _warned = True
    if _is_x86() and not onednn_enabled():
        warnings.warn(
            f"TensorFlow was imported before keras_resnet_lab, with its oneDNN kernels off on this "
            f"{cpu_family()} CPU ({cpu_info()['model']}); training runs 2-3x slower. Import keras_resnet_lab "
            f"before TensorFlow and Keras, or set {ONEDNN_ENV}=1 before starting Python.", stacklevel=3)
