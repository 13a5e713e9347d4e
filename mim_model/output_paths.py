"""Output paths checked before any work starts: a folder to write into, or a new file's place.

A long run (training, a refiner fit, a scan) that can only find out at its end that its
output cannot be written wastes the run; these checks fail at once with a one-line message.
"""

from __future__ import annotations

import os
from pathlib import Path

from mim_model.errors import OutputPathError

__all__ = ["make_output_dir", "check_output_file", "file_in_the_way"]


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its parents, if it is not a folder (what
    keeps a folder from being made at ``path``); None when nothing is in the way."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def make_output_dir(path: str | os.PathLike[str], what: str,
                    error: type[Exception] = OutputPathError) -> Path:
    """Create the folder ``path`` (and its parents) to write outputs into.

    Parameters
    ----------
    path : path
        The folder; it may exist already.
    what : str
        How the message names it (``"--out"``, ``"train out_dir"``).
    error : exception type
        Raised on failure (a package passes its own root's class).

    Raises
    ------
    error
        A file stands at ``path`` or at one of its parents, or the folder cannot be created.
    """
    path = Path(path)
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise error(f"{what} {path}: expected a folder (or a place to make one), got a file at {blocker}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{what} {path}: expected a folder that can be created, got {exc.strerror or exc}") from exc
    return path


def check_output_file(path: str | os.PathLike[str], what: str,
                      error: type[Exception] = OutputPathError) -> Path:
    """Check that a file can be written at ``path`` later; its folder is created now.

    Raises
    ------
    error
        ``path`` is a folder, or its folder cannot be made (see :func:`make_output_dir`).
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path}: expected a file path, got a folder")
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise error(f"{what} {path}: expected a path inside a folder, got a file at {blocker}")
    make_output_dir(path.parent, what, error)
    return path
