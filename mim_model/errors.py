"""Exceptions of :mod:`mim_model`: one root, each also a matching built-in type."""

from __future__ import annotations

__all__ = [
    "MiMError",
    "InputShapeError",
    "OutputPathError",
    "ScanBackendUnavailableError",
    "WeightsError",
]


class MiMError(Exception):
    """Root of every error raised by :mod:`mim_model`."""


class InputShapeError(MiMError, ValueError):
    """An input tensor does not have the shape the network accepts."""


class OutputPathError(MiMError, ValueError):
    """An output folder or file cannot be made where it was asked for (a file in the way)."""


class ScanBackendUnavailableError(MiMError, RuntimeError):
    """A selective-scan backend was asked for but cannot run here."""


class WeightsError(MiMError, ValueError):
    """A weights file cannot be read or does not match the network."""
