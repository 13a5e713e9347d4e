"""Detections as vectors: GeoParquet (canonical), GeoPackage and RFC 7946 GeoJSON.

One row per object (:class:`pipeline.vectorize.Detection`), a Point at the object's centroid,
columns exactly :data:`COLUMNS`:

============ ======= ==========================================================
scene        str     scene file stem
row, col     float64 centroid in pixel index space (pixel (r, c) is at (r, c))
x, y         float64 centroid in the scene CRS: ``transform @ (col + 0.5, row + 0.5)``
lon, lat     float64 centroid in WGS84 (EPSG:4326, pyproj ``always_xy``); NaN without CRS
area_px      int64   pixels in the object
score_max    float64 max probability over the object
score_mean   float64 mean probability over the object
row_min ...  int64   inclusive bounding box ``row_min, col_min, row_max, col_max``
============ ======= ==========================================================

- ``detections.parquet`` and ``detections.gpkg``: geometry ``Point(x, y)`` in the scene CRS.
- ``detections.geojson``: RFC 7946, so geometry ``Point(lon, lat)`` in WGS84 (GDAL's
  ``RFC7946=YES``, coordinates rounded to 7 decimals, about 1 cm).
- **Scene without CRS**: lon/lat are NaN and a warning is logged. Parquet and GeoPackage get
  ``Point(x, y)`` in the scene's pixel-derived coordinates with no CRS. The GeoJSON gets
  **null geometries** (the rows and their x/y/row/col properties are kept): RFC 7946 says
  GeoJSON coordinates are WGS84 lon/lat, and every reader assumes so, so writing pixel
  coordinates there would silently put the detections somewhere on Earth.
- Zero detections still give valid files: GeoParquet and GeoPackage keep this schema (a
  Point layer with no rows); the GeoJSON is an empty FeatureCollection (GeoJSON has no way to
  state a schema without features).
- Each file is written to a temporary name in the output directory and moved into place with
  ``os.replace``, so a reader never sees a half-written file.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.errors import InputError
from pipeline.grid import SceneGrid
from pipeline.vectorize import Detection

__all__ = [
    "COLUMNS",
    "LAYER",
    "VectorFormat",
    "FILENAMES",
    "detections_frame",
    "write_detections",
    "atomic_write",
]

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "scene",
    "row",
    "col",
    "x",
    "y",
    "lon",
    "lat",
    "area_px",
    "score_max",
    "score_mean",
    "row_min",
    "col_min",
    "row_max",
    "col_max",
)
_DTYPES: dict[str, str] = {
    "scene": "str",
    "row": "float64",
    "col": "float64",
    "x": "float64",
    "y": "float64",
    "lon": "float64",
    "lat": "float64",
    "area_px": "int64",
    "score_max": "float64",
    "score_mean": "float64",
    "row_min": "int64",
    "col_min": "int64",
    "row_max": "int64",
    "col_max": "int64",
}
LAYER = "detections"
VectorFormat = Literal["parquet", "gpkg", "geojson"]
FILENAMES: dict[str, str] = {
    "parquet": "detections.parquet",
    "gpkg": "detections.gpkg",
    "geojson": "detections.geojson",
}


def detections_frame(
    detections: Sequence[Detection], grid: SceneGrid, scene: str
) -> gpd.GeoDataFrame:
    """Detections as a GeoDataFrame: columns :data:`COLUMNS` + ``geometry`` (Point at x, y).

    Parameters
    ----------
    detections : sequence of Detection
    grid : SceneGrid
        The scene's grid; gives x/y, the CRS and lon/lat.
    scene : str
        Value of the ``scene`` column.

    Returns
    -------
    geopandas.GeoDataFrame
        CRS = the scene CRS (None without one, then lon/lat are NaN and a warning is logged).
    """
    n = len(detections)

    def col(name: str) -> np.ndarray:
        return np.array([getattr(d, name) for d in detections], dtype=_DTYPES[name])

    rows, cols = col("row"), col("col")
    x, y = grid.pixel_to_map(rows, cols)
    x = np.asarray(x, dtype=np.float64).reshape(n)
    y = np.asarray(y, dtype=np.float64).reshape(n)
    crs = None
    if grid.crs_wkt is not None:
        from pyproj import CRS, Transformer

        crs = CRS.from_epsg(grid.epsg) if grid.epsg is not None else CRS.from_wkt(grid.crs_wkt)
        transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        lon, lat = (np.asarray(v, dtype=np.float64).reshape(n) for v in transformer.transform(x, y))
    else:
        log.warning(
            "%s: scene has no CRS: detections are in pixel coordinates, without lon/lat", scene
        )
        lon = np.full(n, np.nan)
        lat = np.full(n, np.nan)
    data = {
        "scene": pd.Series([scene] * n, dtype="str"),
        "row": rows,
        "col": cols,
        "x": x,
        "y": y,
        "lon": lon,
        "lat": lat,
    }
    for name in COLUMNS[7:]:
        data[name] = col(name)
    frame = pd.DataFrame({k: data[k] for k in COLUMNS})
    return gpd.GeoDataFrame(
        frame, geometry=shapely.points(x, y) if n else gpd.GeoSeries([], crs=crs), crs=crs
    )


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name in ``path``'s directory, then ``os.replace``.

    The temporary name keeps ``path``'s suffix (drivers look at it). On failure the
    temporary file is removed and the error propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_parquet(frame: gpd.GeoDataFrame, tmp: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*crs.*", category=UserWarning)
        frame.to_parquet(tmp, index=False)


def _write_gpkg(frame: gpd.GeoDataFrame, tmp: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*crs.*", category=UserWarning)
        frame.to_file(tmp, driver="GPKG", layer=LAYER, engine="pyogrio", geometry_type="Point")


def _write_geojson(frame: gpd.GeoDataFrame, tmp: Path) -> None:
    if frame.crs is None:
        log.warning(
            "%s: scene has no CRS: GeoJSON geometries are null (RFC 7946 needs WGS84);"
            " positions are in the x/y/row/col properties",
            tmp.name,
        )
        geometry = gpd.GeoSeries([None] * len(frame), crs="EPSG:4326")
    elif len(frame):
        geometry = gpd.GeoSeries(
            shapely.points(frame["lon"].to_numpy(), frame["lat"].to_numpy()), crs="EPSG:4326"
        )
    else:
        geometry = gpd.GeoSeries([], crs="EPSG:4326")
    wgs84 = gpd.GeoDataFrame(
        frame.drop(columns=frame.geometry.name), geometry=geometry.values, crs="EPSG:4326"
    )
    wgs84.to_file(
        tmp,
        driver="GeoJSON",
        engine="pyogrio",
        geometry_type="Point",
        layer_options={"RFC7946": "YES", "WRITE_NAME": "NO"},
    )


_WRITERS: dict[str, Callable[[gpd.GeoDataFrame, Path], None]] = {
    "parquet": _write_parquet,
    "gpkg": _write_gpkg,
    "geojson": _write_geojson,
}


def write_detections(
    frame: gpd.GeoDataFrame,
    out_dir: str | os.PathLike[str],
    formats: Iterable[VectorFormat] = ("parquet", "gpkg", "geojson"),
) -> dict[str, Path]:
    """Write ``detections.{parquet,gpkg,geojson}`` atomically into ``out_dir``.

    Parameters
    ----------
    frame : GeoDataFrame
        From :func:`detections_frame`.
    out_dir : path-like
        The scene's output directory (created if missing).
    formats : iterable of {"parquet", "gpkg", "geojson"}

    Returns
    -------
    dict
        Format -> path written.

    Raises
    ------
    InputError
        Unknown format, or ``frame`` lacks a column of :data:`COLUMNS`.
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"write_detections: frame lacks columns {missing}")
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for fmt in formats:
        if fmt not in _WRITERS:
            raise InputError(
                f"write_detections: unknown format {fmt!r}, expected one of {list(_WRITERS)}"
            )
        written[fmt] = atomic_write(out / FILENAMES[fmt], functools.partial(_WRITERS[fmt], frame))
        log.info("wrote %s (%d rows)", written[fmt], len(frame))
    return written
