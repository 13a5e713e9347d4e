"""Exceptions of :mod:`pipeline`: one root; each also inherits the matching built-in.

Messages name the file or field, the expected and the actual value, on one line: the CLI
prints ``str(error)`` and exits non-zero, without a traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "IrscanError",
    "InputError",
    "SceneError",
    "SettingError",
    "NormalizationError",
    "OutputExistsError",
    "JobSpecError",
    "TileFailedError",
    "LockedError",
    "shown",
]


def shown(value: Any) -> str:
    """``repr(value)`` cut to 80 characters, for the 'got ...' part of a one-line message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class IrscanError(Exception):
    """Root of every error raised by :mod:`pipeline`."""


class InputError(IrscanError, ValueError):
    """A user-supplied value (option, path, file content) is not acceptable."""


class SceneError(InputError):
    """A scene cannot be used: not a raster, rotated grid, missing band, ..."""


class SettingError(InputError):
    """A scan setting cannot be used as given. ``key`` names the setting as a job file's
    ``scan:`` mapping spells it (``ray_address``, ``device``, ...), so that ``irscan run`` and
    ``irscan plan`` can name the job's key; ``irscan scan`` prints the message alone."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:  # Ray pickles errors raised in its workers
        return type(self), (str(self), self.key)


class NormalizationError(SettingError):
    """The normalization asked for cannot map a scene (``norm none`` on an integer band)."""

    def __init__(self, message: str, key: str = "norm_mode") -> None:
        super().__init__(message, key)


class OutputExistsError(IrscanError, FileExistsError):
    """The output exists and ``--overwrite`` was not given."""


class JobSpecError(InputError):
    """A job file does not validate."""


class TileFailedError(IrscanError, RuntimeError):
    """A tile failed after its retries."""


class LockedError(IrscanError, RuntimeError):
    """Another job holds the lock on an output."""
