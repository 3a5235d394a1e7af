"""File primitives every layer shares: atomic writes, staging folders, checksums, Markdown tables.

A file or folder is built under a temporary *staging* name in its own parent and renamed into
place, so a process killed at any moment leaves either the old complete file or the new one.
A staging name carries its process id and host, so the next writer into that folder removes
what a killed process left (never what a live one is writing). Files get the user's umask
(`tempfile.mkstemp` alone would make them 0600).
"""

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

STAGING_PREFIX = ".staging-"
# PyTorch state dicts (torch.save's zip pickle) and safetensors: what `weights=` may name.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def umask_mode(mode):
    """`mode` less the process umask: what a plainly created file or folder would get."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@functools.cache
def _process_space():
    """This host and PID namespace: two containers on one host may reuse each other's process ids."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


def _staging_prefix(name):
    return f"{STAGING_PREFIX}{os.getpid()}-{_process_space()}-{name}-"


def _is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # another user's process, or no such id: keep its files
        return True
    return True


def remove_stale_staging(parent):
    """Removes the staging files and folders in `parent` whose process (on this host) has died."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    space = _process_space()
    for path in parent.glob(f"{STAGING_PREFIX}*"):
        pid, _, rest = path.name[len(STAGING_PREFIX):].partition("-")
        if not pid.isdigit() or not rest.startswith(f"{space}-") or _is_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def staging_dir(parent, name):
    """A new, empty staging folder in `parent` (umask permissions) for building `name`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    path = Path(tempfile.mkdtemp(prefix=_staging_prefix(name), dir=parent))
    os.chmod(path, umask_mode(0o777))  # mkdtemp makes it 0700: a server running as another user could not read it
    return path


def _exchange(first, second):
    """Atomically swaps two paths (Linux `renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    try:
        renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # Windows has no process-wide C library handle
        return False
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system without exchange
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_folder(staging, target):
    """Moves the finished `staging` folder onto `target`, replacing what `target` held.

    Where the system can swap two folders atomically (Linux), a reader sees the old `target` or
    the new one at every instant, and a kill leaves the old one in the staging name for
    `remove_stale_staging`. Elsewhere the old folder is moved aside first.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    if not _exchange(staging, target):
        aside = staging.with_name(staging.name + "-old")
        os.replace(target, aside)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(aside, target)  # put the old one back rather than leave it to stale-staging clean-up
            raise
        staging = aside
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

    Example:
        >>> with atomic_path("model.keras") as tmp:
        ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_staging_prefix(path.stem), suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text):
    """Writes `text` to `path` atomically and returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def sha256_file(path):
    """The SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_once(path):
    """A file's SHA-256, read once per process for each (path, size, modification time): a run
    checks an archive or a checkpoint more than once (before the data loads, per tuner trial)."""
    info = Path(path).stat()
    return _sha256_once(str(Path(path).resolve()), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_once(path, size, mtime_ns):
    return sha256_file(path)


def markdown_table(header, rows):
    """A GitHub Markdown table; cells are converted with `str`."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])
