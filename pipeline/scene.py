"""Open, validate and read scenes with rasterio: tiles with padding and a validity mask.

A scene is any single band of any raster GDAL opens (GeoTIFF/COG, VRT, JP2, ``/vsi...``
paths), of any integer or float dtype. All reads are windowed or decimated, so memory is
O(tile), never O(scene).

Validity
--------
A pixel is *valid* when it lies inside the scene and is not nodata. Nodata comes from GDAL's
mask for the band (``dataset.read_masks``: the nodata value, an internal/external mask or
an alpha band), and for float bands every NaN, +inf or -inf is nodata too. Invalid pixels
are returned as NaN in the float32 pixel array, plus ``valid == False``;
:func:`pipeline.normalize.apply` replaces the NaNs with a neutral value before the model sees
them.

Padding at scene edges
----------------------
A tile's read window may hang over the scene edge. The pixels outside the scene are filled
by **reflection about the scene's edge pixels, without repeating them** (numpy
``np.pad(scene, mode="reflect")`` of the *whole* scene: ``... c b | a b c d | c b a ...``, as
torch's ``ReflectionPad2d`` / OpenCV's ``BORDER_REFLECT_101``; periodic, so it also fills
windows larger than the scene), so the model sees plausible texture instead of an artificial
step at the border. Only the block of the scene that the mirrored window needs is read (at
most the window's size). ``padding="edge"`` (repeat the edge pixel) is the alternative.
Padded pixels are always marked invalid; they never become detections because only the
tile's core (inside the scene) is kept.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window as RioWindow

from pipeline.errors import SceneError
from pipeline.grid import SceneGrid, check_transform
from pipeline.tiling import Tile, Window

__all__ = [
    "Padding",
    "SceneInfo",
    "TileData",
    "SceneReader",
    "open_scene",
    "scene_name",
    "read_tile",
    "read_window",
    "read_decimated",
    "decimated_shape",
]

log = logging.getLogger(__name__)

Padding = Literal["reflect", "edge"]
_PADDINGS: tuple[str, ...] = ("reflect", "edge")


@dataclass(frozen=True, slots=True)
class SceneInfo:
    """What the pipeline needs to know about a validated scene; plain and picklable.

    Attributes
    ----------
    path : str
        The path as given (local path, VRT, ``/vsi...``).
    name : str
        The scene's file stem, used as the output folder name and the ``scene`` column.
    band : int
        1-based band index to read.
    grid : SceneGrid
        Shape, transform and CRS.
    dtype : str
        The band's numpy dtype name.
    nodata : float or None
        The band's nodata value, if any.
    driver : str
        GDAL driver short name.
    overview_factors : tuple of int
        Decimation factors of the band's overviews (empty when there are none).
    """

    path: str
    name: str
    band: int
    grid: SceneGrid
    dtype: str
    nodata: float | None
    driver: str
    overview_factors: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class TileData:
    """Pixels read from a scene window and their validity.

    Attributes
    ----------
    pixels : ndarray of float32, shape (H, W)
        Band values in the source units; NaN where nodata (padding reflects them as NaN too).
    valid : ndarray of bool, shape (H, W)
        True for pixels inside the scene that are not nodata.
    """

    pixels: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]

    @property
    def all_nodata(self) -> bool:
        """True when no pixel is valid: the runner must not send this tile to the model."""
        return not bool(self.valid.any())


def scene_name(path: str | os.PathLike[str]) -> str:
    """The scene's file stem: ``/data/a/T18SVG.tif -> "T18SVG"``, ``/vsizip/x.zip/b.jp2 -> "b"``."""
    return Path(os.fspath(path)).stem


def _is_vsi(path: str) -> bool:
    return path.startswith("/vsi") or "://" in path


def _open(path: str) -> rasterio.io.DatasetReader:
    """rasterio.open with our errors; silences rasterio's own not-georeferenced warning."""
    if not _is_vsi(path) and not os.path.exists(path):
        raise SceneError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SceneError(f"{path}: not a raster GDAL can read ({detail})") from err


def open_scene(path: str | os.PathLike[str], band: int = 1) -> SceneInfo:
    """Open and validate a scene; read only its metadata.

    Parameters
    ----------
    path : str or path-like
        Any raster GDAL opens, including VRT and ``/vsi...`` paths.
    band : int
        1-based band to use.

    Returns
    -------
    SceneInfo

    Raises
    ------
    SceneError
        Missing file, not a raster, band out of range, complex dtype, rotated/sheared or
        degenerate transform. The message names the file.

    Notes
    -----
    A scene without a CRS is accepted with a logged warning: its map coordinates are the
    transform applied to pixel coordinates (the identity when the file has no geotransform
    either, i.e. plain pixel coordinates), and there is no lon/lat.
    """
    spath = os.fspath(path)
    if isinstance(band, bool) or not isinstance(band, int):
        raise SceneError(f"{spath}: band must be an integer, got {band!r}")
    with _open(spath) as ds:
        if ds.count < 1:
            raise SceneError(f"{spath}: has no raster bands")
        if not 1 <= band <= ds.count:
            raise SceneError(
                f"{spath}: band {band} does not exist; the file has {ds.count} band(s),"
                f" choose --band 1..{ds.count}"
            )
        dtype = ds.dtypes[band - 1]
        if np.dtype(dtype).kind not in "uif":
            raise SceneError(f"{spath}: band {band} has dtype {dtype}; expected integer or float")
        check_transform(ds.transform, spath)
        crs_wkt: str | None = None
        epsg: int | None = None
        if ds.crs is not None:
            crs_wkt = ds.crs.to_wkt(version="WKT2_2019")
            epsg = ds.crs.to_epsg()
        else:
            extra = " (its GCPs/RPCs are not used)" if ds.gcps[0] or ds.rpcs else ""
            log.warning(
                "%s: scene has no CRS%s; running in pixel coordinates, without lon/lat",
                spath,
                extra,
            )
        grid = SceneGrid(ds.height, ds.width, ds.transform, crs_wkt, epsg)
        return SceneInfo(
            path=spath,
            name=scene_name(spath),
            band=band,
            grid=grid,
            dtype=str(dtype),
            nodata=None if ds.nodata is None else float(ds.nodata),
            driver=str(ds.driver),
            overview_factors=tuple(int(f) for f in ds.overviews(band)),
        )


class SceneReader:
    """An open scene for many windowed reads (one per worker; not picklable: pass SceneInfo).

    Parameters
    ----------
    scene : SceneInfo
        From :func:`open_scene`.
    padding : {"reflect", "edge"}
        How pixels outside the scene are filled (see the module docstring).

    Raises
    ------
    SceneError
        The file cannot be opened any more, or ``padding`` is unknown.
    """

    def __init__(self, scene: SceneInfo, *, padding: Padding = "reflect") -> None:
        if padding not in _PADDINGS:
            raise SceneError(f"{scene.path}: padding must be one of {_PADDINGS}, got {padding!r}")
        self.scene = scene
        self.padding: Padding = padding
        self._ds = _open(scene.path)
        flags = self._ds.mask_flag_enums[scene.band - 1]
        self._all_valid = list(flags) == [MaskFlags.all_valid]
        self._is_float = np.dtype(scene.dtype).kind == "f"

    def close(self) -> None:
        """Close the dataset."""
        self._ds.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _finish(self, raw: npt.NDArray[np.generic], mask: npt.NDArray[np.uint8] | None) -> TileData:
        pixels = raw.astype(np.float32, copy=False)
        valid = np.ones(raw.shape, dtype=bool) if mask is None else mask > 0
        if self._is_float:
            valid &= np.isfinite(pixels)
        if not valid.all():
            if not pixels.flags.writeable:
                pixels = pixels.copy()
            pixels[~valid] = np.nan
        return TileData(pixels, valid)

    def read_window(self, window: Window) -> TileData:
        """Read a window that may extend beyond the scene; outside pixels are padded.

        Parameters
        ----------
        window : Window
            Pixel window in scene coordinates; must overlap the scene.

        Returns
        -------
        TileData
            ``window.shape`` float32 pixels (NaN at nodata) and the valid mask.

        Raises
        ------
        SceneError
            The window does not overlap the scene, or GDAL fails to read it.
        """
        grid = self.scene.grid
        inner = window.intersection(grid.height_px, grid.width_px)
        if inner.height == 0 or inner.width == 0:
            raise SceneError(
                f"{self.scene.path}: window {window} does not overlap the"
                f" {grid.height_px}x{grid.width_px} scene"
            )
        if inner == window:
            return self._read_inside(window)
        # Source row/col of every output row/col, mirrored about the *scene* edges; read the
        # (at most tile-sized) block that holds them and gather.
        rows = _pad_index(np.arange(window.row_off, window.row_stop), grid.height_px, self.padding)
        cols = _pad_index(np.arange(window.col_off, window.col_stop), grid.width_px, self.padding)
        r_lo, c_lo = int(rows.min()), int(cols.min())
        block = Window(r_lo, c_lo, int(rows.max()) + 1 - r_lo, int(cols.max()) + 1 - c_lo)
        data = self._read_inside(block)
        take = np.ix_(rows - r_lo, cols - c_lo)
        pixels = data.pixels[take]
        valid = np.zeros(window.shape, dtype=bool)
        r0, c0 = inner.row_off - window.row_off, inner.col_off - window.col_off
        valid[r0 : r0 + inner.height, c0 : c0 + inner.width] = data.valid[
            inner.row_off - r_lo : inner.row_stop - r_lo,
            inner.col_off - c_lo : inner.col_stop - c_lo,
        ]
        return TileData(pixels, valid)

    def _read_inside(self, window: Window) -> TileData:
        rio_window = RioWindow(
            col_off=window.col_off, row_off=window.row_off, width=window.width, height=window.height
        )
        try:
            raw = self._ds.read(self.scene.band, window=rio_window)
            mask = (
                None if self._all_valid else self._ds.read_masks(self.scene.band, window=rio_window)
            )
        except RasterioIOError as err:
            raise SceneError(f"{self.scene.path}: read of window {window} failed: {err}") from err
        return self._finish(raw, mask)

    def read_tile(self, tile: Tile) -> TileData:
        """Read a tile's ``tile_px x tile_px`` read window (see :meth:`read_window`)."""
        return self.read_window(tile.read)

    def read_decimated(self, max_side_px: int) -> TileData:
        """The whole scene reduced so its long side is at most ``max_side_px`` (never enlarged).

        Uses nearest-neighbour decimation, so values keep the source distribution and GDAL
        reads from overviews where the file has them; nodata is decimated the same way.

        Parameters
        ----------
        max_side_px : int
            Upper bound of the long side of the result, >= 1.

        Returns
        -------
        TileData
            Shape ``(ceil(H*s), ceil(W*s))`` with ``s = min(1, max_side_px / max(H, W))``
            (each side at least 1).

        Raises
        ------
        SceneError
            ``max_side_px < 1`` or GDAL fails to read.
        """
        if max_side_px < 1:
            raise SceneError(f"{self.scene.path}: max_side_px must be >= 1, got {max_side_px}")
        h, w = decimated_shape(self.scene.grid.height_px, self.scene.grid.width_px, max_side_px)
        try:
            raw = self._ds.read(self.scene.band, out_shape=(h, w), resampling=Resampling.nearest)
            mask = (
                None
                if self._all_valid
                else self._ds.read_masks(
                    self.scene.band, out_shape=(h, w), resampling=Resampling.nearest
                )
            )
        except RasterioIOError as err:
            raise SceneError(f"{self.scene.path}: decimated read failed: {err}") from err
        return self._finish(raw, mask)


def _pad_index(index: npt.NDArray[np.int64], n: int, padding: Padding) -> npt.NDArray[np.int64]:
    """Scene index in ``0..n-1`` that fills each (possibly outside) index ``index``.

    ``"reflect"``: mirror about the first and last pixel without repeating them, periodically
    (period ``2*(n-1)``), exactly numpy's ``np.pad(mode="reflect")`` of the whole axis;
    ``"edge"``: clamp.
    """
    if padding == "edge" or n == 1:
        return np.clip(index, 0, n - 1)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m < n, m, period - m)


def decimated_shape(height_px: int, width_px: int, max_side_px: int) -> tuple[int, int]:
    """Shape of a scene reduced to at most ``max_side_px`` on the long side, aspect kept."""
    scale = min(1.0, max_side_px / max(height_px, width_px))
    h = min(max_side_px, max(1, int(np.ceil(height_px * scale - 1e-9))))
    w = min(max_side_px, max(1, int(np.ceil(width_px * scale - 1e-9))))
    return (h, w)


def read_window(scene: SceneInfo, window: Window, *, padding: Padding = "reflect") -> TileData:
    """Open, read one window, close; see :meth:`SceneReader.read_window`."""
    with SceneReader(scene, padding=padding) as reader:
        return reader.read_window(window)


def read_tile(scene: SceneInfo, tile: Tile, *, padding: Padding = "reflect") -> TileData:
    """Open, read one tile, close; see :meth:`SceneReader.read_tile`."""
    return read_window(scene, tile.read, padding=padding)


def read_decimated(scene: SceneInfo, max_side_px: int) -> TileData:
    """Open, read the scene decimated, close; see :meth:`SceneReader.read_decimated`."""
    with SceneReader(scene) as reader:
        return reader.read_decimated(max_side_px)
