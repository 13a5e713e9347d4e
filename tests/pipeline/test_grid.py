"""pipeline.grid: pixel-centre mapping, inverse, window transforms, transform validation."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.transform
import rasterio.windows
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import SceneError
from pipeline.grid import (
    SceneGrid,
    affine_from_gdal,
    check_transform,
    gdal_geotransform,
    map_to_pixel,
    pixel_centre_x,
    pixel_centre_y,
    pixel_to_map,
    window_transform,
)

UTM = Affine(20.0, 0.0, 435720.0, 0.0, -20.0, 4179460.0)


def test_pixel_centre_matches_rasterio_xy_center() -> None:
    rows = np.array([0, 5, 972])
    cols = np.array([0, 7, 966])
    x, y = pixel_to_map(UTM, rows, cols)
    rx, ry = rasterio.transform.xy(UTM, rows, cols, offset="center")
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)
    # pixel (0, 0) centre is half a pixel in from the corner, not the corner itself
    assert (float(x[0]), float(y[0])) == (435730.0, 4179450.0)


def test_map_to_pixel_of_centre_is_integer_index() -> None:
    row, col = map_to_pixel(UTM, 435730.0, 4179450.0)
    assert (float(row), float(col)) == (0.0, 0.0)
    # rasterio.transform.rowcol (floor) agrees with floor(row + 0.5)
    r, c = rasterio.transform.rowcol(UTM, 436131.0, 4179249.0)
    row, col = map_to_pixel(UTM, 436131.0, 4179249.0)
    assert (int(np.floor(row + 0.5)), int(np.floor(col + 0.5))) == (r, c)


finite = st.floats(-1e4, 1e4, allow_nan=False)
steps = st.floats(0.01, 1000.0).flatmap(lambda v: st.sampled_from([v, -v]))


@given(a=steps, e=steps, c=finite, f=finite, row=finite, col=finite)
def test_map_to_pixel_inverts_pixel_to_map(
    a: float, e: float, c: float, f: float, row: float, col: float
) -> None:
    t = Affine(a, 0.0, c * 100, 0.0, e, f * 100)
    x, y = pixel_to_map(t, row, col)
    r2, c2 = map_to_pixel(t, x, y)
    assert float(r2) == pytest.approx(row, abs=1e-6 * (1 + abs(row)) + 1e-3)
    assert float(c2) == pytest.approx(col, abs=1e-6 * (1 + abs(col)) + 1e-3)


# rasterio.windows.transform itself still uses affine's deprecated `*`
@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
@given(row_off=st.integers(-600, 60000), col_off=st.integers(-600, 60000))
def test_window_transform_matches_rasterio(row_off: int, col_off: int) -> None:
    win = rasterio.windows.Window(col_off=col_off, row_off=row_off, width=10, height=10)
    assert window_transform(UTM, row_off, col_off).almost_equals(
        rasterio.windows.transform(win, UTM)
    )


def test_window_pixel_centres_agree_with_scene() -> None:
    wt = window_transform(UTM, 100, 200)
    assert pixel_to_map(wt, 3, 4) == pixel_to_map(UTM, 103, 204)


def test_gdal_geotransform_round_trip() -> None:
    gt = gdal_geotransform(UTM)
    assert gt == (435720.0, 20.0, 0.0, 4179460.0, 0.0, -20.0)
    assert affine_from_gdal(gt) == UTM


def test_coordinate_vectors_are_pixel_centres() -> None:
    np.testing.assert_array_equal(pixel_centre_x(UTM, 2, 5), [435770.0, 435790.0, 435810.0])
    np.testing.assert_array_equal(pixel_centre_y(UTM, 0, 2), [4179450.0, 4179430.0])


@pytest.mark.parametrize(
    "transform",
    [
        Affine(20.0, 1.0, 0.0, 0.0, -20.0, 0.0),
        Affine(20.0, 0.0, 0.0, 0.5, -20.0, 0.0),
        Affine.rotation(30) @ Affine.scale(20, -20),
    ],
)
def test_rotated_or_sheared_transform_is_refused(transform: Affine) -> None:
    with pytest.raises(SceneError, match=r"scene\.tif: rotated or sheared .* b=") as info:
        check_transform(transform, "scene.tif")
    assert "\n" not in str(info.value)


def test_degenerate_transform_is_refused() -> None:
    with pytest.raises(SceneError, match="zero pixel size"):
        check_transform(Affine(0.0, 0.0, 0.0, 0.0, -20.0, 0.0), "x.tif")


def test_flipped_axes_are_accepted() -> None:
    grid = SceneGrid(10, 10, Affine(-2.0, 0.0, 100.0, 0.0, 2.0, 50.0))
    assert grid.bounds == (80.0, 50.0, 100.0, 70.0)
    x, y = grid.pixel_to_map(0, 0)
    assert (float(x), float(y)) == (99.0, 51.0)


def test_scene_grid_validation() -> None:
    with pytest.raises(SceneError, match="at least 1x1"):
        SceneGrid(0, 5, UTM)
    with pytest.raises(SceneError, match="rotated"):
        SceneGrid(5, 5, Affine(1.0, 0.2, 0.0, 0.0, -1.0, 0.0))
    grid = SceneGrid(973, 967, UTM, "WKT", 32618)
    assert grid.shape == (973, 967) and grid.has_crs
    assert not SceneGrid(1, 1, Affine.identity()).has_crs
