"""pipeline.scene: validation errors, windowed reads with padding, nodata, VRT and /vsi paths."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window as RioWindow

from pipeline.errors import SceneError
from pipeline.scene import (
    SceneReader,
    open_scene,
    read_decimated,
    read_tile,
    read_window,
    scene_name,
)
from pipeline.tiling import TilingSpec, Window, plan_tiles

DTYPES = ["uint8", "uint16", "int16", "float32", "float64"]


def _ramp(shape: tuple[int, int], dtype: str) -> np.ndarray:
    h, w = shape
    ramp = (np.arange(h)[:, None] * 3 + np.arange(w)[None, :]) % 200
    return ramp.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiles_equal_source_and_pad_by_reflection(make_scene, dtype: str) -> None:
    data = _ramp((70, 45), dtype)
    path = make_scene((70, 45), dtype=dtype, data=data)
    scene = open_scene(path)
    assert scene.dtype == dtype and scene.grid.shape == (70, 45) and scene.grid.epsg == 32618
    spec = TilingSpec(64, 16)
    with SceneReader(scene) as reader:
        for tile in plan_tiles(70, 45, spec):
            got = reader.read_tile(tile)
            assert got.pixels.dtype == np.float32 and got.pixels.shape == (64, 64)
            # expected: the whole scene mirrored (numpy reflect), then cut at the read window
            pad = 64
            big = np.pad(data.astype(np.float32), pad, mode="reflect")
            r0, c0 = tile.read.row_off + pad, tile.read.col_off + pad
            np.testing.assert_array_equal(got.pixels, big[r0 : r0 + 64, c0 : c0 + 64])
            inside = np.zeros((70 + 2 * pad, 45 + 2 * pad), dtype=bool)
            inside[pad:-pad, pad:-pad] = True
            np.testing.assert_array_equal(got.valid, inside[r0 : r0 + 64, c0 : c0 + 64])
            # the core is always inside the scene and valid
            assert got.valid[tile.core_in_tile()].all()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(h=st.integers(1, 9), w=st.integers(1, 9), r0=st.integers(-20, 8), c0=st.integers(-20, 8))
def test_windows_larger_than_tiny_scenes_mirror_the_whole_scene(
    tiny_scenes: dict[tuple[int, int], Path], h: int, w: int, r0: int, c0: int
) -> None:
    data = _ramp((h, w), "uint16")
    scene = open_scene(tiny_scenes[(h, w)])
    win = Window(min(r0, h - 1), min(c0, w - 1), 24, 24)
    got = read_window(scene, win)
    big = np.pad(data.astype(np.float32), 40, mode="reflect")
    expected = big[win.row_off + 40 : win.row_stop + 40, win.col_off + 40 : win.col_stop + 40]
    np.testing.assert_array_equal(got.pixels, expected)
    assert got.valid.sum() == win.intersection(h, w).height * win.intersection(h, w).width


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int], Path]:
    """Every h x w ramp scene for 1 <= h, w <= 9 (written once for the hypothesis test)."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for h in range(1, 10):
        for w in range(1, 10):
            path = root / f"t{h}x{w}.tif"
            with rasterio.open(
                path,
                "w",
                driver="GTiff",
                height=h,
                width=w,
                count=1,
                dtype="uint16",
                crs="EPSG:32618",
                transform=Affine(20.0, 0.0, 0.0, 0.0, -20.0, 0.0),
            ) as ds:
                ds.write(_ramp((h, w), "uint16"), 1)
            out[(h, w)] = path
    return out


def test_edge_padding_option(make_scene) -> None:
    data = _ramp((10, 10), "uint16")
    scene = open_scene(make_scene((10, 10), data=data))
    got = read_window(scene, Window(-3, -2, 16, 16), padding="edge")
    expected = np.pad(data.astype(np.float32), ((3, 3), (2, 4)), mode="edge")
    np.testing.assert_array_equal(got.pixels, expected)


def test_one_pixel_scene_pads_to_full_tile(make_scene) -> None:
    scene = open_scene(make_scene((1, 1), data=np.array([[7]])))
    (tile,) = plan_tiles(1, 1, TilingSpec(128, 32))
    got = read_tile(scene, tile)
    assert got.pixels.shape == (128, 128) and (got.pixels == 7).all()
    assert got.valid.sum() == 1 and got.valid[32, 32]


def test_nodata_value_marks_invalid(make_scene) -> None:
    data = _ramp((40, 40), "int16")
    data[5:10, 5:10] = -9999
    scene = open_scene(make_scene((40, 40), dtype="int16", data=data, nodata=-9999))
    assert scene.nodata == -9999
    got = read_window(scene, Window(0, 0, 40, 40))
    assert not got.valid[5:10, 5:10].any() and got.valid.sum() == 40 * 40 - 25
    assert np.isnan(got.pixels[5:10, 5:10]).all()
    assert not np.isnan(got.pixels[got.valid]).any()


def test_float_nan_is_nodata_without_nodata_value(make_scene) -> None:
    data = _ramp((20, 20), "float32")
    data[3, 4] = np.nan
    scene = open_scene(make_scene((20, 20), dtype="float32", data=data))
    got = read_window(scene, Window(0, 0, 20, 20))
    assert not got.valid[3, 4] and got.valid.sum() == 399


def test_internal_mask_marks_invalid(make_scene) -> None:
    path = make_scene((20, 20), dtype="uint8", data=_ramp((20, 20), "uint8"))
    with rasterio.open(path, "r+") as ds:
        mask = np.full((20, 20), 255, dtype=np.uint8)
        mask[:, :5] = 0
        ds.write_mask(mask)
    got = read_window(open_scene(path), Window(0, 0, 20, 20))
    assert not got.valid[:, :5].any() and got.valid[:, 5:].all()


def test_all_nodata_tile_is_detected(make_scene) -> None:
    data = np.full((300, 200), 0, dtype="uint16")
    data[:, 150:] = 500
    scene = open_scene(make_scene((300, 200), data=data, nodata=0))
    tiles = plan_tiles(300, 200, TilingSpec(128, 32))
    flags = {t.tile_id: read_tile(scene, t).all_nodata for t in tiles}
    assert flags["r0_c0"] and not flags["r0_c2"]
    # r0_c1's core (cols 64..127) is nodata, but its halo reaches col 159: not skippable
    assert not flags["r0_c1"]


def test_vrt_path(make_scene, tmp_path: Path) -> None:
    data = _ramp((30, 20), "uint16")
    src = make_scene((30, 20), data=data, name="src.tif")
    vrt = tmp_path / "scene.vrt"
    with rasterio.open(src) as ds:
        gt = ", ".join(repr(v) for v in ds.transform.to_gdal())
        wkt = ds.crs.to_wkt()
    vrt.write_text(
        f"""<VRTDataset rasterXSize="20" rasterYSize="30">
  <SRS>{wkt.replace('"', "&quot;")}</SRS>
  <GeoTransform>{gt}</GeoTransform>
  <VRTRasterBand dataType="UInt16" band="1">
    <SimpleSource>
      <SourceFilename relativeToVRT="1">src.tif</SourceFilename>
      <SourceBand>1</SourceBand>
    </SimpleSource>
  </VRTRasterBand>
</VRTDataset>
"""
    )
    scene = open_scene(vrt)
    assert scene.driver == "VRT" and scene.name == "scene" and scene.grid.epsg == 32618
    got = read_window(scene, Window(-2, -2, 34, 24))
    np.testing.assert_array_equal(got.pixels[2:32, 2:22], data)


def test_vsizip_path(make_scene, tmp_path: Path) -> None:
    data = _ramp((16, 16), "uint8")
    src = make_scene((16, 16), dtype="uint8", data=data, name="inner.tif")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(src, "inner.tif")
    scene = open_scene(f"/vsizip/{archive}/inner.tif")
    assert scene.name == "inner"
    np.testing.assert_array_equal(read_window(scene, Window(0, 0, 16, 16)).pixels, data)


def test_sentinel2_crop_tile_matches_rasterio(s2_b12: Path) -> None:
    scene = open_scene(s2_b12)
    assert scene.grid.shape == (973, 967) and scene.grid.epsg == 32618 and scene.dtype == "uint16"
    assert tuple(scene.grid.transform)[:6] == (20.0, 0.0, 435720.0, 0.0, -20.0, 4179460.0)
    tiles = plan_tiles(973, 967, TilingSpec(256, 32))
    tile = tiles[2 * 6 + 2]  # r2_c2: entirely inside the scene
    assert tile.tile_id == "r2_c2" and tile.read.intersection(973, 967) == tile.read
    got = read_tile(scene, tile)
    with rasterio.open(s2_b12) as ds:
        ref = ds.read(
            1,
            window=RioWindow(
                col_off=tile.read.col_off, row_off=tile.read.row_off, width=256, height=256
            ),
        )
    np.testing.assert_array_equal(got.pixels, ref.astype(np.float32))
    assert got.valid.all()


def test_decimated_read_is_bounded_and_uses_overviews(make_scene) -> None:
    data = _ramp((300, 257), "uint16")
    path = make_scene((300, 257), data=data)
    scene = open_scene(path)
    small = read_decimated(scene, 64)
    assert small.pixels.shape == (64, 55)
    assert read_decimated(scene, 5000).pixels.shape == (300, 257)  # never enlarged
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4])
    scene = open_scene(path)
    assert scene.overview_factors == (2, 4)
    assert read_decimated(scene, 75).pixels.shape == (75, 65)


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tif"
    with pytest.raises(SceneError, match=f"{missing}: no such file"):
        open_scene(missing)


def test_not_a_raster(tmp_path: Path) -> None:
    text = tmp_path / "notes.tif"
    text.write_text("hello, not a raster\n")
    with pytest.raises(SceneError, match="notes.tif: not a raster GDAL can read") as info:
        open_scene(text)
    assert "\n" not in str(info.value)


def test_band_out_of_range(make_scene) -> None:
    path = make_scene((8, 8), count=2)
    assert open_scene(path, band=2).band == 2
    with pytest.raises(
        SceneError, match=r"scene.tif: band 3 does not exist; the file has 2 band\(s\)"
    ):
        open_scene(path, band=3)
    with pytest.raises(SceneError, match="band 0 does not exist"):
        open_scene(path, band=0)


def test_rotated_transform_is_refused(make_scene) -> None:
    path = make_scene((8, 8), transform=Affine(20.0, 2.0, 435720.0, 1.0, -20.0, 4179460.0))
    with pytest.raises(
        SceneError, match=r"scene.tif: rotated or sheared geotransform .*b=2 c=.* d=1"
    ):
        open_scene(path)


def test_scene_without_crs_warns_and_uses_pixel_grid(make_scene, caplog) -> None:
    path = make_scene((8, 8), crs=None, transform=None)
    with caplog.at_level(logging.WARNING, logger="pipeline.scene"):
        scene = open_scene(path)
    assert scene.grid.crs_wkt is None and scene.grid.epsg is None
    assert scene.grid.transform == Affine.identity()
    assert "no CRS" in caplog.text and "scene.tif" in caplog.text


def test_scene_name() -> None:
    assert scene_name("/data/x/T18SVG_B12.tif") == "T18SVG_B12"
    assert scene_name("/vsizip//d/a.zip/b.jp2") == "b"


def test_window_outside_scene_is_refused(make_scene) -> None:
    scene = open_scene(make_scene((8, 8)))
    with pytest.raises(SceneError, match="does not overlap"):
        read_window(scene, Window(100, 100, 4, 4))
