"""Helper run in separate processes by test_write_zarr (must be importable, not a test)."""

from __future__ import annotations

import numpy as np

from pipeline.stitch import stitch_core
from pipeline.tiling import TilingSpec, tile_at
from pipeline.write_zarr import open_mask_store


def write_tiles(
    path: str, shape: tuple[int, int], spec: TilingSpec, indices: list[tuple[int, int]]
) -> int:
    """Open the store r+ and write each tile's core with value = row + col index / 100."""
    store = open_mask_store(path, mode="r+")
    for i, j in indices:
        tile = tile_at(shape[0], shape[1], spec, i, j)
        prob = np.full((spec.tile_px, spec.tile_px), (i + j) / 100.0, dtype=np.float32)
        store.write_core(tile, *stitch_core(tile, prob))
    return len(indices)
