"""The scene's ``mask.zarr``: a Zarr v3 group with per-pixel ``probability`` and ``mask``.

Layout of ``mask.zarr`` (Zarr format 3, no sharding)
----------------------------------------------------
``probability`` : float32 (H, W), chunks (core_px, core_px), fill NaN
    Model probability in [0, 1]; NaN at nodata and where no tile was written. float32
    rather than a quantised uint8 so that ``score_max``/``score_mean`` are exact; zstd
    compresses the mostly-zero chunks to little.
``mask`` : uint8 (H, W), chunks (core_px, core_px), fill 255
    0 background, 1 target (``probability > threshold``), 255 nodata / not written.
``x`` : float64 (W,), ``y`` : float64 (H,), chunks (core_px,)
    Pixel-*centre* map coordinates (``transform @ (col + 0.5, row + 0.5)``), written block
    by block, never built whole.
``spatial_ref`` : int32 scalar
    CF grid mapping: ``crs_wkt``/``spatial_ref`` (WKT2), the CF grid-mapping attributes of
    the CRS (``pyproj.CRS.to_cf``) and ``GeoTransform`` (GDAL order, space separated), as
    rioxarray writes them.

Every array carries Zarr v3 ``dimension_names`` (``["y", "x"]``, ``["x"]``, ``["y"]``, ``[]``),
and ``probability``/``mask`` carry ``grid_mapping = "spatial_ref"`` and ``coordinates =
"spatial_ref"``, so ``xarray.open_zarr`` (+ rioxarray) gives a georeferenced DataArray.

Group attributes: ``crs_wkt`` (WKT2 or null), ``epsg`` (int or null), ``transform`` (affine
6-tuple ``a, b, c, d, e, f``, rasterio order), ``geotransform`` (GDAL 6-tuple ``c, a, b, f, d,
e``), and ``irscan`` (format version, scene name, shape, tile_px/halo_px/core_px, threshold,
pixel convention).

Concurrency
-----------
Chunk ``(i, j)`` is exactly the core of tile ``(i, j)``; :func:`write_core` writes one whole
chunk (an edge chunk is clipped to the array), so writers of different tiles touch different
chunk files and can run in different processes without locks. The store is created once,
by the driver, with :func:`create_mask_store`; workers :func:`open_mask_store` it ``"r+"``
and never touch metadata. Chunks that are entirely fill (all-nodata tiles) are not stored
(``write_empty_chunks=False``): a skipped tile needs no write at all.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zarr
from affine import Affine

from pipeline.errors import InputError, OutputExistsError
from pipeline.grid import SceneGrid, gdal_geotransform, pixel_centre_x, pixel_centre_y
from pipeline.stitch import DEFAULT_THRESHOLD, MASK_NODATA
from pipeline.tiling import Tile, TilingSpec, tile_grid_shape

__all__ = [
    "FORMAT_VERSION",
    "MASK_ZARR",
    "MaskStore",
    "create_mask_store",
    "open_mask_store",
    "write_core",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MASK_ZARR = "mask.zarr"
_COORD_BLOCK_PX = 1 << 20  # x/y coordinates are written in blocks of this many values

ExistMode = Literal["error", "overwrite", "resume"]


def _crs_cf_attrs(crs_wkt: str) -> dict[str, Any]:
    """CF grid-mapping attributes of a CRS (empty where pyproj cannot express it in CF)."""
    from pyproj import CRS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cf = CRS.from_wkt(crs_wkt).to_cf()
    except Exception as err:  # noqa: BLE001 - to_cf raises assorted pyproj errors; CF is optional
        log.debug("no CF grid mapping for CRS: %s", err)
        return {}
    return {k: v for k, v in cf.items() if _json_safe(v)}


def _json_safe(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_json_safe(v) for v in value)
    return isinstance(value, (str, int, bool)) or value is None


def _group_attrs(
    grid: SceneGrid, spec: TilingSpec, scene_name: str, threshold: float
) -> dict[str, Any]:
    t = grid.transform
    return {
        "crs_wkt": grid.crs_wkt,
        "epsg": grid.epsg,
        "transform": [float(v) for v in tuple(t)[:6]],
        "geotransform": list(gdal_geotransform(t)),
        "irscan": {
            "format_version": FORMAT_VERSION,
            "scene": scene_name,
            "height_px": grid.height_px,
            "width_px": grid.width_px,
            "tile_px": spec.tile_px,
            "halo_px": spec.halo_px,
            "core_px": spec.core_px,
            "threshold": threshold,
            "pixel_convention": "transform maps (col, row) to a pixel's upper-left corner;"
            " x/y arrays hold pixel centres, transform @ (col + 0.5, row + 0.5)",
            "mask_values": {"background": 0, "target": 1, "nodata": MASK_NODATA},
        },
    }


class MaskStore:
    """An open ``mask.zarr``: grid, tiling and the two arrays.

    Not meant to be pickled to workers: send the path and call :func:`open_mask_store` there.

    Attributes
    ----------
    path : Path
    grid : SceneGrid
    spec : TilingSpec
    scene_name : str
    threshold : float
    probability, mask : zarr.Array
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self.group = group
        attrs: dict[str, Any] = dict(group.attrs)
        meta: dict[str, Any] = attrs["irscan"]
        self.grid = SceneGrid(
            int(meta["height_px"]),
            int(meta["width_px"]),
            Affine(*attrs["transform"]),
            attrs.get("crs_wkt"),
            attrs.get("epsg"),
        )
        self.spec = TilingSpec(int(meta["tile_px"]), int(meta["halo_px"]))
        self.scene_name = str(meta["scene"])
        self.threshold = float(meta["threshold"])
        self.probability: zarr.Array[Any] = group["probability"]  # type: ignore[assignment]
        self.mask: zarr.Array[Any] = group["mask"]  # type: ignore[assignment]

    @property
    def chunk_grid_shape(self) -> tuple[int, int]:
        """Number of chunk rows and columns (== tile rows and columns)."""
        return tile_grid_shape(self.grid.height_px, self.grid.width_px, self.spec)

    def write_core(
        self,
        tile: Tile,
        prob_core: npt.ArrayLike,
        mask_core: npt.ArrayLike,
    ) -> None:
        """See :func:`write_core`."""
        write_core(self, tile, prob_core, mask_core)


def _check_compatible(store: MaskStore, grid: SceneGrid, spec: TilingSpec, path: Path) -> None:
    problems = []
    if store.grid.shape != grid.shape:
        problems.append(f"shape {store.grid.shape} != {grid.shape}")
    if tuple(store.grid.transform)[:6] != tuple(grid.transform)[:6]:
        problems.append(
            f"transform {tuple(store.grid.transform)[:6]} != {tuple(grid.transform)[:6]}"
        )
    if store.grid.crs_wkt != grid.crs_wkt:
        problems.append("CRS differs")
    if store.spec != spec:
        problems.append(f"tiling {store.spec} != {spec}")
    if problems:
        raise OutputExistsError(
            f"{path}: exists and does not match this scan ({'; '.join(problems)});"
            " use --overwrite to replace it"
        )


def create_mask_store(
    path: str | os.PathLike[str],
    grid: SceneGrid,
    spec: TilingSpec,
    *,
    scene_name: str,
    threshold: float = DEFAULT_THRESHOLD,
    exist: ExistMode = "error",
) -> MaskStore:
    """Create ``mask.zarr`` (metadata and coordinate arrays only; no pixel chunk is written).

    Parameters
    ----------
    path : path-like
        The ``mask.zarr`` directory.
    grid : SceneGrid
    spec : TilingSpec
    scene_name : str
    threshold : float
        Recorded in the attributes (the mask itself is made by :func:`pipeline.stitch.stitch_core`).
    exist : {"error", "overwrite", "resume"}
        What to do when ``path`` exists: refuse, delete and recreate, or reopen it for
        writing after checking that shape, transform, CRS and tiling match.

    Returns
    -------
    MaskStore

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``exist="error"``, or ``exist="resume"`` and it does not match.
    InputError
        Unknown ``exist``.
    """
    p = Path(path)
    if exist not in ("error", "overwrite", "resume"):
        raise InputError(f"mask store: exist must be error/overwrite/resume, got {exist!r}")
    if p.exists():
        if exist == "error":
            raise OutputExistsError(f"{p}: already exists; use --overwrite to replace it")
        if exist == "resume":
            store = open_mask_store(p, mode="r+")
            _check_compatible(store, grid, spec, p)
            log.info("%s: resuming existing mask store", p)
            return store
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()

    h, w = grid.shape
    core = spec.core_px
    group = zarr.create_group(
        store=str(p), zarr_format=3, attributes=_group_attrs(grid, spec, scene_name, threshold)
    )
    common: dict[str, Any] = {"coordinates": "spatial_ref", "grid_mapping": "spatial_ref"}
    group.create_array(
        "probability",
        shape=(h, w),
        chunks=(core, core),
        dtype="float32",
        fill_value=np.float32("nan"),
        dimension_names=["y", "x"],
        attributes={
            **common,
            "long_name": "target probability",
            "units": "1",
            "valid_range": [0.0, 1.0],
        },
    )
    group.create_array(
        "mask",
        shape=(h, w),
        chunks=(core, core),
        dtype="uint8",
        fill_value=MASK_NODATA,
        dimension_names=["y", "x"],
        attributes={
            **common,
            "long_name": "target mask",
            "flag_values": [0, 1, MASK_NODATA],
            "flag_meanings": "background target nodata",
            "threshold": threshold,
        },
    )
    _write_spatial_ref(group, grid)
    _write_coords(group, grid, core)
    log.info("%s: created %dx%d mask store, chunks %dx%d", p, h, w, core, core)
    return MaskStore(p, group)


def _write_spatial_ref(group: zarr.Group, grid: SceneGrid) -> None:
    attrs: dict[str, Any] = {
        "GeoTransform": " ".join(repr(float(v)) for v in gdal_geotransform(grid.transform)),
    }
    if grid.crs_wkt is not None:
        attrs.update(_crs_cf_attrs(grid.crs_wkt))
        attrs["crs_wkt"] = grid.crs_wkt
        attrs["spatial_ref"] = grid.crs_wkt
    ref = group.create_array(
        "spatial_ref", shape=(), dtype="int32", fill_value=0, dimension_names=[], attributes=attrs
    )
    ref[...] = 0


def _coord_attrs(grid: SceneGrid, axis: str) -> dict[str, Any]:
    if grid.crs_wkt is None:
        return {"long_name": f"{axis} of pixel centre (no CRS)", "axis": axis.upper()}
    from pyproj import CRS

    crs = CRS.from_wkt(grid.crs_wkt)
    if crs.is_geographic:
        name = "longitude" if axis == "x" else "latitude"
        units = "degrees_east" if axis == "x" else "degrees_north"
        return {"standard_name": name, "long_name": name, "units": units, "axis": axis.upper()}
    unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
    return {
        "standard_name": f"projection_{axis}_coordinate",
        "long_name": f"{axis} coordinate of projection (pixel centre)",
        "units": "m" if unit in ("metre", "meter") else unit,
        "axis": axis.upper(),
    }


def _write_coords(group: zarr.Group, grid: SceneGrid, core: int) -> None:
    for axis, n, fn in (
        ("x", grid.width_px, pixel_centre_x),
        ("y", grid.height_px, pixel_centre_y),
    ):
        arr = group.create_array(
            axis,
            shape=(n,),
            chunks=(core,),
            dtype="float64",
            fill_value=np.nan,
            dimension_names=[axis],
            attributes=_coord_attrs(grid, axis),
        )
        block = max(core, (_COORD_BLOCK_PX // core) * core)  # chunk-aligned blocks
        for start in range(0, n, block):
            stop = min(n, start + block)
            arr[start:stop] = fn(grid.transform, start, stop)


def open_mask_store(path: str | os.PathLike[str], mode: Literal["r", "r+"] = "r") -> MaskStore:
    """Open an existing ``mask.zarr``.

    Parameters
    ----------
    path : path-like
    mode : {"r", "r+"}
        ``"r+"`` for tile writers.

    Returns
    -------
    MaskStore

    Raises
    ------
    InputError
        ``path`` is not an irscan mask store (missing, not Zarr, wrong format version).
    """
    p = Path(path)
    try:
        group = zarr.open_group(store=str(p), mode=mode, zarr_format=3)
        meta = group.attrs["irscan"]
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        raise InputError(f"{p}: not an irscan mask store ({type(err).__name__}: {err})") from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise InputError(f"{p}: mask store format {version!r}, expected {FORMAT_VERSION}")
    return MaskStore(p, group)


def write_core(
    store: MaskStore,
    tile: Tile,
    prob_core: npt.ArrayLike,
    mask_core: npt.ArrayLike,
) -> None:
    """Write one tile's core: exactly chunk ``tile.chunk_index`` of both arrays.

    Parameters
    ----------
    store : MaskStore
        Opened ``"r+"`` (or just created).
    tile : Tile
        A tile of this store's plan.
    prob_core : array_like of float32, shape (core.height, core.width)
        From :func:`pipeline.stitch.stitch_core` (NaN at nodata).
    mask_core : array_like of uint8, same shape
        0/1/255 from :func:`pipeline.stitch.stitch_core`.

    Raises
    ------
    InputError
        The tile is not aligned with the store's chunks or the arrays have the wrong shape.
    """
    core_px = store.spec.core_px
    core = tile.core
    expected_h = min(core_px, store.grid.height_px - core.row_off)
    expected_w = min(core_px, store.grid.width_px - core.col_off)
    if (
        core.row_off != tile.row_idx * core_px
        or core.col_off != tile.col_idx * core_px
        or core.shape != (expected_h, expected_w)
    ):
        raise InputError(
            f"{store.path}: tile {tile.tile_id} core {core} is not chunk"
            f" ({tile.row_idx}, {tile.col_idx}) of a {store.grid.shape} store with chunks {core_px}"
        )
    prob = np.asarray(prob_core, dtype=np.float32)
    mask = np.asarray(mask_core, dtype=np.uint8)
    if prob.shape != core.shape or mask.shape != core.shape:
        raise InputError(
            f"{store.path}: tile {tile.tile_id}: expected core arrays of shape {core.shape},"
            f" got probability {prob.shape} and mask {mask.shape}"
        )
    sl = core.to_slices()
    store.probability[sl] = prob
    store.mask[sl] = mask
