"""Exceptions that carry one clear, user-facing message.

Every error a user can cause (a wrong name, option, path, corrupt file, a diverging run) is
raised as one of these, so the CLI can print the message alone instead of a traceback.
"""


class LabError(Exception):
    """Base class of the errors this package raises on bad user input."""


class ConfigError(LabError, ValueError):
    """A model name, option or training setting that is not valid."""


class DataError(LabError, ValueError):
    """A dataset that cannot be found, read or trusted."""


class TrainingDiverged(LabError, RuntimeError):
    """The loss became NaN or infinite during training."""


def choices_message(kind, received, choices):
    """Formats the standard 'unknown X' message: what was received and what is valid."""
    listed = ", ".join(repr(c) for c in choices)
    return f"Unknown {kind} {received!r}. Valid choices: {listed}."
