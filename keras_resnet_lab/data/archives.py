"""Safe, atomic extraction of .tar, .tar.gz and .zip archives into a cache folder.

Members that would land outside the target (absolute paths, `..`), links, devices and other
special files are refused before anything is written. Extraction goes to a temporary folder
beside the target and is renamed into place, so an interrupted run never leaves a half-extracted
cache that a later run would trust.
"""

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ..errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive(path):
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def default_cache_dir():
    """`$KERAS_RESNET_LAB_CACHE`, else `~/.cache/keras_resnet_lab`."""
    return Path(os.environ.get("KERAS_RESNET_LAB_CACHE", Path.home() / ".cache" / "keras_resnet_lab"))


def archive_key(path):
    """A cache key that changes when the archive's name, size or modification time changes."""
    info = Path(path).stat()
    stem = Path(path).name.split(".")[0]
    return f"{stem}-{info.st_size}-{info.st_mtime_ns}"


def _check_member_name(archive, name):
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in parts or ":" in name:
        raise DataError(
            f"Refusing to extract {archive}: member {name!r} would be written outside the target "
            "folder. The archive may be malicious; extract it yourself only if you trust it."
        )


def _check_tar_member(archive, member):
    _check_member_name(archive, member.name)
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise DataError(
            f"Refusing to extract {archive}: member {member.name!r} is a {kind}; only regular "
            "files and folders are accepted in a dataset archive."
        )


def _check_zip_member(archive, info):
    _check_member_name(archive, info.filename)
    mode = info.external_attr >> 16
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(
            f"Refusing to extract {archive}: member {info.filename!r} is a link or special file; "
            "only regular files and folders are accepted in a dataset archive."
        )


def _extract_into(archive, target):
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_zip_member(archive, info)
                zf.extractall(target)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    _check_tar_member(archive, member)
                # The "data" filter repeats our checks inside the standard library.
                tf.extractall(target, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise DataError(f"Cannot read archive {archive}: {error}. Is the file complete?") from None


def extract_archive(archive, cache_dir=None):
    """Extracts `archive` once into `<cache_dir>/extracted/<key>/` and returns that folder."""
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"Archive {archive} does not exist.")
    root = Path(cache_dir or default_cache_dir()) / "extracted"
    target = root / archive_key(archive)
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        _extract_into(archive, staging)
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():  # a concurrent run may have won the rename
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
