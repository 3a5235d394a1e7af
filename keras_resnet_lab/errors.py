"""Exceptions that carry one clear, user-facing message.

Every error a user can cause (a wrong name, option, path, corrupt file, a diverging run) is
raised as one of these, so the CLI can print the message alone instead of a traceback. The
system's own failures (disk full, a read-only folder, a port in use) stay `OSError`s, which
`os_error_message` words the same way.
"""

import errno

_OS_FIXES = {
    errno.ENOSPC: "free some space, or write to a folder on another disk",
    errno.EDQUOT: "free some space (your disk quota is full), or write to another disk",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EADDRINUSE: "another process uses that address; choose a free port",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
}


class LabError(Exception):
    """Base class of the errors this package raises on bad user input."""


class ConfigError(LabError, ValueError):
    """A model name, option or training setting that is not valid."""


class DataError(LabError, ValueError):
    """A dataset that cannot be found, read or trusted."""


class WeightsError(LabError, ValueError):
    """A checkpoint that cannot be found, downloaded, trusted or mapped onto the model."""


class ProcessLost(LabError, RuntimeError):
    """Another process of a multi-process run stopped, so this one cannot go on."""


class TrainingDiverged(LabError, RuntimeError):
    """The loss became NaN or infinite during training."""


def choices_message(kind, received, choices):
    """Formats the standard 'unknown X' message: what was received and what is valid."""
    listed = ", ".join(repr(c) for c in choices)
    return f"Unknown {kind} {received!r}. Valid choices: {listed}."


def os_error_message(error):
    """One line for an `OSError`: what failed, on which path, and the fix."""
    where = f": {error.filename}" if getattr(error, "filename", None) else ""
    fix = _OS_FIXES.get(error.errno)
    return f"{error.strerror or error}{where}" + (f". Fix: {fix}." if fix else ".")
