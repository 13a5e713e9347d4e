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


class NormalizationError(InputError):
    """The normalization asked for cannot map a scene (``norm none`` on an integer band)."""


class OutputExistsError(IrscanError, FileExistsError):
    """The output exists and ``--overwrite`` was not given."""


class JobSpecError(InputError):
    """A job file does not validate."""


class TileFailedError(IrscanError, RuntimeError):
    """A tile failed after its retries."""


class LockedError(IrscanError, RuntimeError):
    """Another job holds the lock on an output."""
