"""A scene's pixel grid and georeference: shape, affine transform, CRS. Pure: no I/O.

Conventions
-----------
- Axis order is (row, col) / (height, width) everywhere; the affine maps (col, row) to (x, y)
  as GDAL and rasterio define it: ``x, y = transform @ (col, row)`` for the *corner* of a pixel.
- **Pixel indices and pixel centres.** Fractional pixel coordinates in this project are in
  *index space*: pixel ``(r, c)`` (numpy ``array[r, c]``) has index coordinate ``(r, c)`` and its
  **centre** on the map is ``transform @ (c + 0.5, r + 0.5)``. So a one-pixel object at
  ``array[10, 20]`` has centroid ``row=10.0, col=20.0`` and its map position is the centre of
  that pixel, not its upper-left corner. :func:`pixel_to_map` and :func:`map_to_pixel` add and
  remove that half pixel; nothing else in the project should.
- Only axis-aligned grids are accepted (``transform.b == transform.d == 0``). Flipped axes
  (south-up, negative x step) are fine; rotated or sheared transforms are refused by
  :func:`check_transform` with :class:`~pipeline.errors.SceneError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine

from pipeline.errors import SceneError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "SceneGrid",
    "check_transform",
    "pixel_to_map",
    "map_to_pixel",
    "window_transform",
    "gdal_geotransform",
    "affine_from_gdal",
    "pixel_centre_x",
    "pixel_centre_y",
]


def check_transform(transform: Affine, source: str) -> None:
    """Refuse a transform that is not an axis-aligned, non-degenerate grid.

    Parameters
    ----------
    transform : Affine
        The scene's affine (rasterio order ``a, b, c, d, e, f``).
    source : str
        The file (or other name) the transform came from, used in the message.

    Raises
    ------
    SceneError
        The transform is rotated or sheared (``b`` or ``d`` non-zero), has a zero or
        non-finite pixel size, or non-finite terms.
    """
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    terms = f"a={a:g} b={b:g} c={c:g} d={d:g} e={e:g} f={f:g}"
    if not all(math.isfinite(v) for v in (a, b, c, d, e, f)):
        raise SceneError(f"{source}: geotransform has non-finite terms ({terms})")
    if b != 0.0 or d != 0.0:
        raise SceneError(
            f"{source}: rotated or sheared geotransform is not supported"
            f" ({terms}; expected b=0 d=0);"
            " warp it to a north-up grid first, e.g. gdalwarp"
        )
    if a == 0.0 or e == 0.0:
        raise SceneError(f"{source}: geotransform has a zero pixel size ({terms})")


@dataclass(frozen=True, slots=True)
class SceneGrid:
    """A scene's pixel grid: shape in pixels, affine transform and CRS.

    Parameters
    ----------
    height_px, width_px : int
        Scene shape in pixels, both >= 1.
    transform : Affine
        Pixel-corner affine: ``transform @ (col, row)`` is the map position of the upper-left
        corner of pixel ``(row, col)``. Must be axis-aligned (see :func:`check_transform`).
    crs_wkt : str or None
        The CRS as WKT, or None when the scene has no CRS (then map coordinates are just the
        transform applied to pixel coordinates, and there is no lon/lat).
    epsg : int or None
        The EPSG code of the CRS where there is one.

    Raises
    ------
    SceneError
        Invalid shape or a rotated/sheared/degenerate transform.
    """

    height_px: int
    width_px: int
    transform: Affine
    crs_wkt: str | None = None
    epsg: int | None = None

    def __post_init__(self) -> None:
        if self.height_px < 1 or self.width_px < 1:
            raise SceneError(
                f"scene grid: shape must be at least 1x1 px, got {self.height_px}x{self.width_px}"
            )
        if not isinstance(self.transform, Affine):
            object.__setattr__(self, "transform", Affine(*tuple(self.transform)[:6]))
        check_transform(self.transform, "scene grid")
        if self.crs_wkt is None and self.epsg is not None:
            raise SceneError(f"scene grid: epsg={self.epsg} given without crs_wkt")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height_px, width_px)``."""
        return (self.height_px, self.width_px)

    @property
    def has_crs(self) -> bool:
        """Whether the grid has a CRS (else map coordinates are pixel-derived, no lon/lat)."""
        return self.crs_wkt is not None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Outer edges ``(left, bottom, right, top)`` in map units (min/max, any axis flip)."""
        x0, y0 = self.transform @ (0, 0)
        x1, y1 = self.transform @ (self.width_px, self.height_px)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def pixel_to_map(
        self, row: npt.ArrayLike, col: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Map ``(x, y)`` of index-space pixel coordinates; see :func:`pixel_to_map`."""
        return pixel_to_map(self.transform, row, col)

    def map_to_pixel(
        self, x: npt.ArrayLike, y: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Index-space ``(row, col)`` of map coordinates; see :func:`map_to_pixel`."""
        return map_to_pixel(self.transform, x, y)

    def window_transform(self, row_off: int, col_off: int) -> Affine:
        """Affine of a window whose upper-left pixel is ``(row_off, col_off)``."""
        return window_transform(self.transform, row_off, col_off)


def pixel_to_map(
    transform: Affine, row: npt.ArrayLike, col: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Map coordinates of pixel *centres* given in index space.

    Parameters
    ----------
    transform : Affine
        Pixel-corner affine of the grid.
    row, col : array_like of float
        Index-space coordinates (pixel ``(r, c)`` is at ``(r, c)``; fractions allowed, e.g.
        a centroid), broadcastable against each other.

    Returns
    -------
    x, y : ndarray of float64
        ``transform @ (col + 0.5, row + 0.5)``, elementwise.
    """
    r = np.asarray(row, dtype=np.float64) + 0.5
    c = np.asarray(col, dtype=np.float64) + 0.5
    t = transform
    x = t.a * c + t.b * r + t.c
    y = t.d * c + t.e * r + t.f
    return x, y


def map_to_pixel(
    transform: Affine, x: npt.ArrayLike, y: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Index-space ``(row, col)`` of map coordinates: the exact inverse of :func:`pixel_to_map`.

    A point at the centre of pixel ``(r, c)`` gives exactly ``(r, c)`` (up to rounding);
    ``floor(row + 0.5)`` is the row of the pixel that contains the point.

    Parameters
    ----------
    transform : Affine
        Pixel-corner affine of the grid (must be invertible).
    x, y : array_like of float
        Map coordinates.

    Returns
    -------
    row, col : ndarray of float64
    """
    inv = ~transform
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    c = inv.a * xs + inv.b * ys + inv.c
    r = inv.d * xs + inv.e * ys + inv.f
    return r - 0.5, c - 0.5


def window_transform(transform: Affine, row_off: int, col_off: int) -> Affine:
    """Affine of the sub-grid whose pixel ``(0, 0)`` is the grid's pixel ``(row_off, col_off)``.

    Offsets may be negative or beyond the grid (windows that hang over the scene edge).
    """
    return transform @ Affine.translation(col_off, row_off)


def gdal_geotransform(transform: Affine) -> tuple[float, float, float, float, float, float]:
    """GDAL's 6-tuple ``(c, a, b, f, d, e)``: origin x, pixel width, row rotation, origin y, ..."""
    t = transform
    return (float(t.c), float(t.a), float(t.b), float(t.f), float(t.d), float(t.e))


def affine_from_gdal(gt: tuple[float, float, float, float, float, float]) -> Affine:
    """Inverse of :func:`gdal_geotransform`."""
    return Affine.from_gdal(*gt)


def pixel_centre_x(transform: Affine, col_start: int, col_stop: int) -> npt.NDArray[np.float64]:
    """x of the pixel centres of columns ``col_start..col_stop-1`` (axis-aligned grids), 1-D."""
    cols = np.arange(col_start, col_stop, dtype=np.float64) + 0.5
    return transform.a * cols + transform.c


def pixel_centre_y(transform: Affine, row_start: int, row_stop: int) -> npt.NDArray[np.float64]:
    """y of the pixel centres of rows ``row_start..row_stop-1`` (axis-aligned grids), 1-D."""
    rows = np.arange(row_start, row_stop, dtype=np.float64) + 0.5
    return transform.e * rows + transform.f
