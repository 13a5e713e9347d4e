"""Chunked post-processing of a finished ``mask.zarr`` with dask: overviews and statistics.

Overviews
---------
:func:`write_overviews` adds max-pooled copies of ``probability`` for quick display in GIS
tools and notebooks: factor 2, 4, 8, ... until the long side fits in one chunk
(``<= core_px``), in the sub-group ``overviews``::

    overviews/probability_{f}   float32 (ceil(H/f), ceil(W/f)), chunks (core_px, core_px)
    overviews/y_{f}, x_{f}      pixel-centre map coordinates of that level (axis Y / X)
    overviews/spatial_ref_{f}   CF grid mapping: CRS + the level's GeoTransform

Level ``f`` pixel ``(r, c)`` is the NaN-ignoring maximum of base pixels ``[r*f:(r+1)*f,
c*f:(c+1)*f]`` (NaN where all of them are nodata), so a one-pixel target stays visible at
every zoom. Its transform is the base transform scaled by ``f`` (``transform @
Affine.scale(f)``); edge pixels may extend past the scene. Dimension names are ``y_{f}`` /
``x_{f}`` (levels differ in size, so they cannot share ``y``/``x`` in one group);
``xarray.open_zarr(store, group="overviews")`` plus rioxarray gives each level's CRS and
transform. The ``overviews`` group attribute ``levels`` lists ``{factor, path, shape,
transform}``.

Each level is computed from the previous one (2x2 max pooling), block by block; every
output chunk is written by exactly one task, so no chunk has two writers.

Statistics
----------
:func:`scene_statistics` returns target and nodata pixel counts and a probability histogram
as a JSON-ready dict, to be merged into ``report.json`` (see :func:`postprocess_scene`).

Scheduler
---------
When Ray is initialised in this process, dask runs on Ray (``ray.util.dask.ray_dask_get``:
the blocks are Ray tasks, spread over the cluster; the output must then be on storage every
node sees, as for the scan itself); otherwise on dask's threaded scheduler. Memory stays
O(chunks): no function here materialises a whole array.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import numpy.typing as npt
import zarr
from affine import Affine
from dask.base import tokenize

from pipeline.errors import InputError
from pipeline.grid import gdal_geotransform, pixel_centre_x, pixel_centre_y
from pipeline.stitch import MASK_NODATA, MASK_TARGET
from pipeline.write_zarr import (
    MASK_ZARR,
    MaskStore,
    _coord_attrs,
    _crs_cf_attrs,
    open_mask_store,
)

__all__ = [
    "HISTOGRAM_BINS",
    "OVERVIEW_GROUP",
    "dask_scheduler",
    "overview_factors",
    "postprocess_scene",
    "scene_statistics",
    "write_overviews",
]

log = logging.getLogger(__name__)

OVERVIEW_GROUP = "overviews"
HISTOGRAM_BINS = 20

SchedulerName = Literal["auto", "ray", "threads", "sync"]


def dask_scheduler(name: SchedulerName = "auto") -> tuple[str | Callable[..., Any], str]:
    """The dask scheduler to use and its label.

    ``"auto"``: Ray's (``ray_dask_get``) when Ray is initialised in this process, else
    ``"threads"``. ``ray`` is never imported here unless it already is (or is asked for).

    Raises
    ------
    InputError
        ``"ray"`` is asked for but Ray is not initialised, or the name is unknown.
    """
    if name not in ("auto", "ray", "threads", "sync"):
        raise InputError(f"postprocess: scheduler must be auto/ray/threads/sync, got {name!r}")
    if name in ("threads", "sync"):
        return name, name
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from ray.util.dask import ray_dask_get

        return ray_dask_get, "ray"
    if name == "ray":
        raise InputError("postprocess: scheduler 'ray' asked for but Ray is not initialised")
    return "threads", "threads"


def _open(store: MaskStore | str | os.PathLike[str], mode: Literal["r", "r+"]) -> MaskStore:
    return store if isinstance(store, MaskStore) else open_mask_store(store, mode=mode)


class _ZarrArrayRef:
    """A Zarr array by path, for dask graphs: pickles as two strings (Ray tasks re-open it).

    Zarr array objects are not sent to Ray workers (their metadata does not survive Ray's
    serialiser); each process opens the array once, on first use.
    """

    def __init__(self, store_path: str, name: str, mode: Literal["r", "r+"]) -> None:
        self.store_path, self.name, self.mode = store_path, name, mode
        arr = self._array()
        self.shape: tuple[int, ...] = tuple(arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)

    def _array(self) -> zarr.Array[Any]:
        cached = self.__dict__.get("_cached")
        if cached is None:
            group = zarr.open_group(store=self.store_path, mode=self.mode, zarr_format=3)
            cached = group[self.name]
            self.__dict__["_cached"] = cached
        return cached  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cached"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getitem__(self, key: Any) -> Any:
        return self._array()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._array()[key] = value


def _dask_array(ms: MaskStore, name: str) -> da.Array:
    """``mask.zarr/<name>`` as a dask array with the store's chunks (reads chunk by chunk)."""
    ref = _ZarrArrayRef(str(ms.path), name, "r")
    chunks = ref._array().chunks
    token = tokenize(str(ms.path), name)
    array: da.Array = da.from_array(  # type: ignore[no-untyped-call]
        ref, chunks=chunks, asarray=True, meta=np.empty((0,) * ref.ndim, ref.dtype),
        name=f"irscan-{name.replace('/', '-')}-{token}",
    )
    return array


# ------------------------------------------------------------------------------ overviews
def overview_factors(height_px: int, width_px: int, core_px: int) -> list[int]:
    """Overview factors 2, 4, 8, ... until the level's long side is ``<= core_px``.

    Empty when the scene itself fits in one chunk.
    """
    factors: list[int] = []
    factor = 1
    while max(-(-height_px // factor), -(-width_px // factor)) > core_px:
        factor *= 2
        factors.append(factor)
    return factors


def _nanmax(block: npt.NDArray[np.float32], axis: Any = None) -> npt.NDArray[np.float32]:
    """Maximum ignoring NaN (NaN only where all are NaN), without warnings."""
    return np.fmax.reduce(block, axis=axis)  # type: ignore[no-any-return]


def _pool2(level: da.Array, chunk_px: int) -> da.Array:
    """2x2 NaN-ignoring max pooling; odd sides are padded with NaN; rechunked to chunk_px."""
    h, w = level.shape
    if h % 2 or w % 2:
        level = da.pad(level, ((0, h % 2), (0, w % 2)), mode="constant", constant_values=np.nan)
    even = 2 * max(1, chunk_px // 2)
    level = level.rechunk((even, even))  # type: ignore[no-untyped-call]
    pooled = da.coarsen(_nanmax, level, {0: 2, 1: 2})
    out: da.Array = pooled.rechunk((chunk_px, chunk_px))
    return out


def _level_attrs(store: MaskStore, factor: int) -> tuple[Affine, dict[str, Any]]:
    transform = store.grid.transform @ Affine.scale(factor)
    return transform, {
        "long_name": f"target probability, max over {factor}x{factor} pixels",
        "units": "1",
        "valid_range": [0.0, 1.0],
        "overview_factor": factor,
        "resampling": "max",
        "transform": [float(v) for v in tuple(transform)[:6]],
        "geotransform": list(gdal_geotransform(transform)),
        "grid_mapping": f"spatial_ref_{factor}",
        "coordinates": f"spatial_ref_{factor}",
    }


def _write_level_georef(group: zarr.Group, store: MaskStore, factor: int, shape: tuple[int, int],
                        transform: Affine, chunk_px: int) -> None:
    grid = store.grid
    ref_attrs: dict[str, Any] = {
        "GeoTransform": " ".join(repr(float(v)) for v in gdal_geotransform(transform)),
    }
    if grid.crs_wkt is not None:
        ref_attrs.update(_crs_cf_attrs(grid.crs_wkt))
        ref_attrs["crs_wkt"] = grid.crs_wkt
        ref_attrs["spatial_ref"] = grid.crs_wkt
    ref = group.create_array(
        f"spatial_ref_{factor}", shape=(), dtype="int32", fill_value=0, dimension_names=[],
        attributes=ref_attrs, overwrite=True,
    )
    ref[...] = 0
    for axis, n, fn in (("x", shape[1], pixel_centre_x), ("y", shape[0], pixel_centre_y)):
        name = f"{axis}_{factor}"
        arr = group.create_array(
            name, shape=(n,), chunks=(chunk_px,), dtype="float64", fill_value=np.nan,
            dimension_names=[name], attributes=_coord_attrs(grid, axis), overwrite=True,
        )
        block = max(chunk_px, ((1 << 20) // chunk_px) * chunk_px)
        for start in range(0, n, block):
            stop = min(n, start + block)
            arr[start:stop] = fn(transform, start, stop)


def write_overviews(
    store: MaskStore | str | os.PathLike[str],
    *,
    scheduler: SchedulerName = "auto",
) -> list[dict[str, Any]]:
    """Write the max-pooled overview levels of ``probability`` (see the module docstring).

    Replaces any existing ``overviews`` group, so running it again gives the same store.

    Parameters
    ----------
    store : MaskStore or path-like
        The scene's ``mask.zarr`` (opened ``"r+"`` when a path is given).
    scheduler : {"auto", "ray", "threads", "sync"}
        See :func:`dask_scheduler`.

    Returns
    -------
    list of dict
        One ``{factor, path, shape, transform}`` per level (empty when the scene fits in one
        chunk).

    Raises
    ------
    InputError
        Not a mask store, or the scheduler is unavailable.
    """
    ms = _open(store, "r+")
    get, label = dask_scheduler(scheduler)
    chunk_px = ms.spec.core_px
    h, w = ms.grid.shape
    factors = overview_factors(h, w, chunk_px)
    root = zarr.open_group(store=str(ms.path), mode="r+", zarr_format=3)
    if OVERVIEW_GROUP in root:
        del root[OVERVIEW_GROUP]
    group = root.create_group(OVERVIEW_GROUP, attributes={"levels": [], "resampling": "max"})
    if not factors:
        log.info("%s: fits in one chunk; no overview levels", ms.path)
        return []

    level = _dask_array(ms, "probability")
    sources: list[da.Array] = []
    targets: list[_ZarrArrayRef] = []
    levels: list[dict[str, Any]] = []
    for factor in factors:
        level = _pool2(level, chunk_px)
        shape = (int(level.shape[0]), int(level.shape[1]))
        transform, attrs = _level_attrs(ms, factor)
        path = f"probability_{factor}"
        group.create_array(
            path, shape=shape, chunks=(chunk_px, chunk_px), dtype="float32",
            fill_value=np.float32("nan"), dimension_names=[f"y_{factor}", f"x_{factor}"],
            attributes=attrs, overwrite=True,
        )
        _write_level_georef(group, ms, factor, shape, transform, chunk_px)
        sources.append(level)
        targets.append(_ZarrArrayRef(str(ms.path), f"{OVERVIEW_GROUP}/{path}", "r+"))
        levels.append({
            "factor": factor,
            "path": f"{OVERVIEW_GROUP}/{path}",
            "shape": list(shape),
            "transform": attrs["transform"],
        })
    da.store(sources, targets, lock=False, compute=True, scheduler=get)  # type: ignore[arg-type]
    group.attrs["levels"] = levels
    log.info("%s: wrote overview factors %s (scheduler %s)", ms.path, factors, label)
    return levels


# ------------------------------------------------------------------------------ statistics
def scene_statistics(
    store: MaskStore | str | os.PathLike[str],
    *,
    bins: int = HISTOGRAM_BINS,
    scheduler: SchedulerName = "auto",
) -> dict[str, Any]:
    """Per-scene statistics of a mask store, computed chunk by chunk.

    Parameters
    ----------
    store : MaskStore or path-like
        The scene's ``mask.zarr``.
    bins : int
        Equal-width probability histogram bins over [0, 1], >= 1.
    scheduler : {"auto", "ray", "threads", "sync"}

    Returns
    -------
    dict
        ``pixels``, ``valid_px``, ``nodata_px``, ``nodata_fraction`` (nodata or never written
        pixels, i.e. ``mask == 255``, over all pixels), ``target_px`` (``mask == 1``),
        ``target_fraction`` (of valid pixels, null when none is valid), ``probability_max``
        (null when no pixel has a probability) and ``probability_histogram``
        (``{"bin_edges": [bins + 1 floats], "counts": [bins ints]}``; NaN excluded, 1.0 in
        the last bin).

    Raises
    ------
    InputError
        Not a mask store, ``bins < 1``, or the scheduler is unavailable.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InputError(f"postprocess: bins must be an integer >= 1, got {bins!r}")
    ms = _open(store, "r")
    get, label = dask_scheduler(scheduler)
    prob = _dask_array(ms, "probability")
    mask = _dask_array(ms, "mask")
    counts, edges = da.histogram(prob, bins=bins, range=(0.0, 1.0))  # type: ignore[no-untyped-call]
    target_px, nodata_px, prob_max, counts_v = dask.compute(  # type: ignore[attr-defined,no-untyped-call]
        (mask == MASK_TARGET).sum(dtype=np.int64),
        (mask == MASK_NODATA).sum(dtype=np.int64),
        da.where(da.isnan(prob), -np.inf, prob).max(),
        counts,
        scheduler=get,
    )
    pixels = int(ms.grid.height_px) * int(ms.grid.width_px)
    valid = pixels - int(nodata_px)
    pmax = float(prob_max)
    log.debug("%s: statistics computed (scheduler %s)", ms.path, label)
    return {
        "pixels": pixels,
        "valid_px": valid,
        "nodata_px": int(nodata_px),
        "nodata_fraction": int(nodata_px) / pixels,
        "target_px": int(target_px),
        "target_fraction": int(target_px) / valid if valid else None,
        "probability_max": pmax if math.isfinite(pmax) else None,
        "probability_histogram": {
            "bin_edges": [float(e) for e in np.asarray(edges)],
            "counts": [int(c) for c in np.asarray(counts_v)],
        },
    }


# ------------------------------------------------------------------------------ one scene
def postprocess_scene(
    scene_dir: str | os.PathLike[str],
    *,
    overviews: bool = True,
    statistics: bool = True,
    scheduler: SchedulerName = "auto",
) -> dict[str, Any]:
    """Overviews and statistics for ``scene_dir/mask.zarr``; merged into ``report.json``.

    The report (when present) gains ``statistics`` and ``overviews`` keys and is replaced
    atomically; running this again gives the same files.

    Returns
    -------
    dict
        ``{"statistics": {...}, "overviews": [...]}`` (the parts asked for).

    Raises
    ------
    InputError
        ``scene_dir`` has no mask store, or the scheduler is unavailable.
    """
    folder = Path(scene_dir)
    ms = open_mask_store(folder / MASK_ZARR, mode="r+")
    result: dict[str, Any] = {}
    if overviews:
        result["overviews"] = write_overviews(ms, scheduler=scheduler)
    if statistics:
        result["statistics"] = scene_statistics(ms, scheduler=scheduler)
    report_path = folder / "report.json"
    if result and report_path.exists():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        report.update(result)
        tmp = folder / ".report.json.post.tmp"
        tmp.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, report_path)
    return result
