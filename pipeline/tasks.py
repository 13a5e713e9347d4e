"""The Ray tasks of a scan: read a tile, compute a scene's normalisation, vectorise chunks.

Kept apart from :mod:`pipeline.runner` and free of torch: a task's function is imported by
every worker process that runs it, and read workers that do not load torch and the network
start in a fraction of the time (they are started for each run, one per core).
"""

from __future__ import annotations

import time
from typing import Any

import ray

from pipeline.normalize import NormalizationSpec, NormalizationStats, compute_stats
from pipeline.scene import SceneInfo, SceneReader
from pipeline.stitch import core_is_nodata
from pipeline.tiling import Tile
from pipeline.vectorize import Detection, vectorize_chunks

__all__ = ["read_tile_task", "scene_stats_task", "vectorize_task"]

_READERS: dict[tuple[str, int], SceneReader] = {}  # per worker process: one open dataset per scene


def _reader(scene: SceneInfo) -> SceneReader:
    key = (scene.path, scene.band)
    if key not in _READERS:
        if len(_READERS) >= 8:
            _READERS.pop(next(iter(_READERS))).close()
        _READERS[key] = SceneReader(scene)
    return _READERS[key]


@ray.remote(num_returns=2, max_retries=2, retry_exceptions=[OSError])
def read_tile_task(scene: SceneInfo, tile: Tile, stats: NormalizationStats) -> tuple[dict, Any]:
    """Read one tile (window + halo), normalise it. Returns (meta, payload).

    payload is (tile01 float32 (T, T), valid bool (T, T)), or None when the tile's core has
    no valid pixel (its chunk keeps the store's nodata fill).
    """
    start = time.perf_counter()
    data = _reader(scene).read_tile(tile)
    if core_is_nodata(tile, data.valid):
        return {"all_nodata": True, "read_s": time.perf_counter() - start}, None
    tile01 = stats.apply(data.pixels)
    return {"all_nodata": False, "read_s": time.perf_counter() - start}, (tile01, data.valid)


@ray.remote
def scene_stats_task(scene: SceneInfo, spec: NormalizationSpec) -> NormalizationStats:
    return compute_stats(scene, spec)


@ray.remote
def vectorize_task(store_path: str, chunk_indices: list[tuple[int, int]]) -> tuple[list[Detection], float]:
    start = time.perf_counter()
    found = vectorize_chunks(store_path, chunk_indices)
    return found, time.perf_counter() - start

