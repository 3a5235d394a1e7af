"""Safe, atomic extraction of .tar, .tar.gz and .zip archives into a cache folder.

Members that would land outside the target (absolute paths, `..`), links, devices and other
special files are refused before anything is written, and so is an archive that would expand
past `ArchiveLimits` (total bytes, expansion ratio, member count). macOS's `__MACOSX/` and `._*`
resource forks are skipped. Extraction goes to a staging folder beside the target and is
renamed into place, so an interrupted run never leaves a half-extracted cache that a later run
would trust (and the next extraction removes what it left).
"""

import dataclasses
import gzip
import math
import os
import shutil
import stat
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

from ..errors import DataError
from ..files import sha256_once, staging_dir

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
LIMITS_ENV = "KERAS_RESNET_LAB_ARCHIVE_LIMITS"


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """The most an archive may expand to before it is refused as a probable archive bomb.

    Defaults fit every public image dataset this package reads (ImageNet's train archive is
    about 147 GB, ratio ~1, 1.3 M files); raise them with `$KERAS_RESNET_LAB_ARCHIVE_LIMITS`,
    e.g. "max_bytes=500e9,max_ratio=1000,max_members=20e6".
    """

    max_bytes: int = 200 * 10**9
    max_ratio: float = 200.0
    max_members: int = 5_000_000

    @classmethod
    def from_env(cls):
        text = os.environ.get(LIMITS_ENV, "").strip()
        if not text:
            return cls()
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            key = key.strip()
            try:
                if key not in {f.name for f in dataclasses.fields(cls)}:
                    raise ValueError(key)
                values[key] = float(value)
                if not math.isfinite(values[key]) or values[key] <= 0:
                    raise ValueError(value)
            except ValueError:
                raise DataError(f"${LIMITS_ENV}={text!r}: expected max_bytes=N,max_ratio=N,max_members=N "
                                f"(any of them, finite and above 0); {item!r} is not one.") from None
        return cls(**{k: (int(v) if k != "max_ratio" else v) for k, v in values.items()})


def _skipped(name):
    """macOS Finder's resource forks: `__MACOSX/...` and `._name` files, never data."""
    parts = Path(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("._"))


def is_archive(path):
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def default_cache_dir():
    """`$KERAS_RESNET_LAB_CACHE`, else `~/.cache/keras_resnet_lab`."""
    return Path(os.environ.get("KERAS_RESNET_LAB_CACHE", Path.home() / ".cache" / "keras_resnet_lab"))


def archive_key(path):
    """The archive's name and the start of its SHA-256: a copy of the same archive (a new
    modification time) reuses its extraction, a changed one with the same size and time does not."""
    stem = Path(path).name.split(".")[0]
    return f"{stem}-{sha256_once(path)[:16]}"


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
    kind = stat.S_IFMT(info.external_attr >> 16)
    # Zips from Python's `writestr` or Windows tools carry permission bits but no file type.
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise DataError(
            f"Refusing to extract {archive}: member {info.filename!r} is a link or special file; "
            "only regular files and folders are accepted in a dataset archive."
        )


def _check_size(archive, sizes, limits):
    total, count = sum(sizes), len(sizes)
    ratio = total / max(archive.stat().st_size, 1)
    problems = [f"{count:,} members (limit {limits.max_members:,})" if count > limits.max_members else "",
                f"{total:,} bytes (limit {limits.max_bytes:,})" if total > limits.max_bytes else "",
                f"a ratio of {ratio:,.0f} to its size (limit {limits.max_ratio:,.0f})" if ratio > limits.max_ratio else ""]
    problems = [p for p in problems if p]
    if problems:
        raise DataError(f"Refusing to extract {archive}: it would expand to {' and '.join(problems)}, as an archive "
                        f"bomb does. If you trust it, raise the limit with ${LIMITS_ENV}, e.g. "
                        "max_bytes=500e9,max_ratio=1000,max_members=20e6.")


PROGRESS_THRESHOLD = 5000  # members: smaller archives extract in a moment, silently


def _with_progress(members, archive):
    """`members`, with a progress bar while a large archive is extracted (once; then cached)."""
    if len(members) < PROGRESS_THRESHOLD:
        yield from members
        return
    from keras.utils import Progbar

    print(f"Extracting {len(members):,} files from {archive.name} (once; then cached)", flush=True)
    progress = Progbar(len(members), unit_name="file", verbose=1 if sys.stdout.isatty() else 2)
    for done, member in enumerate(members, start=1):
        yield member
        if done % 1000 == 0 or done == len(members):
            progress.update(done)


def _extract_into(archive, target, limits):
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = [info for info in zf.infolist() if not _skipped(info.filename)]
                for info in members:
                    _check_zip_member(archive, info)
                _check_size(archive, [info.file_size for info in members], limits)
                for info in _with_progress(members, archive):
                    zf.extract(info, target)
        else:
            with tarfile.open(archive) as tf:
                members = [member for member in tf.getmembers() if not _skipped(member.name)]
                for member in members:
                    _check_tar_member(archive, member)
                _check_size(archive, [member.size for member in members], limits)
                # The "data" filter repeats our checks inside the standard library.
                for member in _with_progress(members, archive):
                    tf.extract(member, target, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"Cannot read archive {archive}: {error}. Is the file complete?") from None


def check_archive_type(path):
    """Refuses a file (a .rar, a .7z, ...) that is not an archive this loader reads, naming the kinds it can."""
    if Path(path).is_file() and not is_archive(path):
        raise DataError(f"Cannot read {path}: expected a folder or a {', '.join(ARCHIVE_SUFFIXES)} archive of "
                        "<split>/<class>/<image> files. Extract it and pass the folder.")


def extract_archive(archive, cache_dir=None, limits=None):
    """Extracts `archive` once into `<cache_dir>/extracted/<key>/` and returns that folder.

    `limits` (an `ArchiveLimits`) defaults to `ArchiveLimits.from_env()`.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"Archive {archive} does not exist.")
    root = Path(cache_dir or default_cache_dir()) / "extracted"
    target = root / archive_key(archive)
    if target.is_dir():
        return target
    staging = staging_dir(root, target.name)
    try:
        _extract_into(archive, staging, limits or ArchiveLimits.from_env())
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():  # a concurrent run may have won the rename
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
