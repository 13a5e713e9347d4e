"""Keep a tile's core: crop the model output, threshold it and apply nodata. Pure.

Stitching is by *core ownership*: the halo of each tile is thrown away and its core is
written, unchanged, as exactly one Zarr chunk (:mod:`pipeline.tiling`). Cores never overlap,
so there is nothing to blend and no seam as long as ``halo_px`` covers the model's receptive
field where it matters; every output pixel comes from the one tile in which it is furthest
from a tile edge (at least ``halo_px`` away, or at the scene edge).

Stored values (see :mod:`pipeline.write_zarr`)
-----------------------------------------------
- ``probability``: float32 in [0, 1]; **NaN** where the pixel is nodata (and for pixels of
  tiles never written).
- ``mask``: uint8, :data:`MASK_BACKGROUND` = 0, :data:`MASK_TARGET` = 1 where
  ``probability > threshold``, :data:`MASK_NODATA` = 255 where the pixel is nodata (or never
  written). Nodata pixels are never targets, whatever the model said there.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from pipeline.errors import InputError
from pipeline.tiling import Tile

__all__ = [
    "MASK_BACKGROUND",
    "MASK_TARGET",
    "MASK_NODATA",
    "PROBABILITY_NODATA",
    "DEFAULT_THRESHOLD",
    "crop_core",
    "stitch_core",
    "threshold_mask",
    "nodata_core",
    "core_is_nodata",
]

MASK_BACKGROUND: Final = 0
MASK_TARGET: Final = 1
MASK_NODATA: Final = 255
PROBABILITY_NODATA: Final = float("nan")
DEFAULT_THRESHOLD: Final = 0.5
"""``probability > 0.5``, i.e. ``logit > 0``: MiM-ISTD's decision rule."""


def crop_core(tile: Tile, tile_array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """The core part of an array laid out like the tile's read window (a view, no copy).

    Parameters
    ----------
    tile : Tile
    tile_array : ndarray, shape (tile_px, tile_px)
        Anything aligned with ``tile.read`` (model output, valid mask...).

    Returns
    -------
    ndarray, shape (core.height, core.width)

    Raises
    ------
    InputError
        ``tile_array`` does not have the read window's shape.
    """
    if tuple(tile_array.shape) != tile.read.shape:
        raise InputError(
            f"stitch: tile {tile.tile_id}: expected an array of shape {tile.read.shape},"
            f" got {tuple(tile_array.shape)}"
        )
    return tile_array[tile.core_in_tile()]


def stitch_core(
    tile: Tile,
    prob_tile: npt.ArrayLike,
    valid_tile: npt.ArrayLike | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Core probability and mask of one tile, ready for :func:`pipeline.write_zarr.write_core`.

    Parameters
    ----------
    tile : Tile
    prob_tile : array_like of float, shape (tile_px, tile_px)
        Model probability (sigmoid of the logits) over the whole read window.
    valid_tile : array_like of bool, shape (tile_px, tile_px), or None
        :attr:`pipeline.scene.TileData.valid` of the same tile (None: all valid).
    threshold : float
        A pixel is a target when ``probability > threshold``.

    Returns
    -------
    prob_core : ndarray of float32, shape (core.height, core.width)
        Probability, NaN at nodata.
    mask_core : ndarray of uint8, same shape
        0 background, 1 target, 255 nodata.

    Raises
    ------
    InputError
        Wrong array shape or a threshold outside [0, 1).
    """
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"stitch: threshold must be in [0, 1), got {threshold}")
    prob = np.array(crop_core(tile, np.asarray(prob_tile)), dtype=np.float32)  # copy
    invalid = ~np.isfinite(prob)
    if valid_tile is not None:
        valid_core = np.asarray(crop_core(tile, np.asarray(valid_tile, dtype=bool)), dtype=bool)
        invalid |= ~valid_core
    if invalid.any():
        prob[invalid] = PROBABILITY_NODATA
    return prob, threshold_mask(prob, threshold)


def threshold_mask(prob: npt.NDArray[np.floating], threshold: float) -> npt.NDArray[np.uint8]:
    """The stored mask of a stored probability array: :data:`MASK_TARGET` where
    ``prob > threshold``, :data:`MASK_NODATA` where ``prob`` is NaN (nodata), else
    :data:`MASK_BACKGROUND`. Re-thresholding a scan's ``probability`` with it gives the mask
    the scan would have written at that threshold."""
    mask = np.where(prob > threshold, MASK_TARGET, MASK_BACKGROUND).astype(np.uint8)
    mask[~np.isfinite(prob)] = MASK_NODATA
    return mask


def nodata_core(tile: Tile) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Core arrays of an all-nodata tile (what the store holds anyway where nothing is written)."""
    shape = tile.core.shape
    return (
        np.full(shape, PROBABILITY_NODATA, dtype=np.float32),
        np.full(shape, MASK_NODATA, dtype=np.uint8),
    )


def core_is_nodata(tile: Tile, valid_tile: npt.ArrayLike) -> bool:
    """True when no pixel of the tile's *core* is valid: its output is all nodata whatever the
    model says, so the runner can skip it (not even write: the store's fill is nodata).

    This skips more than :attr:`pipeline.scene.TileData.all_nodata` (which also needs the
    halo to be empty).

    Parameters
    ----------
    tile : Tile
    valid_tile : array_like of bool, shape (tile_px, tile_px)

    Raises
    ------
    InputError
        ``valid_tile`` does not have the read window's shape.
    """
    return not bool(np.any(crop_core(tile, np.asarray(valid_tile, dtype=bool))))
