"""pipeline.write_vectors: GeoParquet/GPKG/GeoJSON rows, CRS, WGS84 GeoJSON, empty files, no-CRS."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from affine import Affine
from pyproj import CRS, Transformer

from pipeline.grid import SceneGrid
from pipeline.vectorize import Detection
from pipeline.write_vectors import COLUMNS, FILENAMES, detections_frame, write_detections

UTM = Affine(20.0, 0.0, 435720.0, 0.0, -20.0, 4179460.0)
GRID = SceneGrid(973, 967, UTM, CRS.from_epsg(32618).to_wkt(version="WKT2_2019"), 32618)
DETS = [
    Detection(10.0, 20.0, 1, 0.9, 0.9, 10, 20, 10, 20, 20),
    Detection(500.5, 600.25, 4, 0.8, 0.7, 500, 600, 501, 601, 600),
]


def _read(fmt: str, path: Path) -> gpd.GeoDataFrame:
    return gpd.read_parquet(path) if fmt == "parquet" else gpd.read_file(path, engine="pyogrio")


def test_frame_columns_and_pixel_centre_coordinates() -> None:
    frame = detections_frame(DETS, GRID, "s2_B12")
    assert tuple(frame.columns) == (*COLUMNS, "geometry")
    assert frame.crs.to_epsg() == 32618
    # one-pixel object at (10, 20): centre of that pixel
    assert (frame.x[0], frame.y[0]) == (435720.0 + 20.5 * 20, 4179460.0 - 10.5 * 20)
    assert (frame.geometry[1].x, frame.geometry[1].y) == (frame.x[1], frame.y[1])
    lon, lat = Transformer.from_crs(32618, 4326, always_xy=True).transform(frame.x[1], frame.y[1])
    assert (frame.lon[1], frame.lat[1]) == (
        pytest.approx(lon, abs=1e-12),
        pytest.approx(lat, abs=1e-12),
    )
    assert frame.area_px.dtype == np.int64 and frame.row.dtype == np.float64


def test_written_files_read_back_with_same_rows_and_crs(tmp_path: Path) -> None:
    frame = detections_frame(DETS, GRID, "s2_B12")
    paths = write_detections(frame, tmp_path)
    assert {p.name for p in paths.values()} == set(FILENAMES.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILENAMES.values())  # no temp files
    for fmt, path in paths.items():
        back = _read(fmt, path)
        assert list(back.columns) == [*COLUMNS, "geometry"], fmt
        for col in COLUMNS:
            if col == "scene":
                assert list(back[col]) == ["s2_B12"] * 2
            else:
                np.testing.assert_allclose(
                    back[col].to_numpy(dtype=float),
                    frame[col].to_numpy(dtype=float),
                    rtol=0,
                    atol=1e-9,
                    err_msg=f"{fmt}:{col}",
                )
        if fmt == "geojson":
            assert back.crs.to_epsg() == 4326
        else:
            assert back.crs.to_epsg() == 32618, fmt
            np.testing.assert_allclose(back.geometry.x, frame.x)
    assert pyogrio.read_info(paths["gpkg"])["geometry_type"] == "Point"


def test_geojson_is_rfc7946_wgs84(tmp_path: Path) -> None:
    frame = detections_frame(DETS, GRID, "s2_B12")
    path = write_detections(frame, tmp_path, formats=["geojson"])["geojson"]
    doc = json.loads(path.read_text())
    assert "crs" not in doc  # RFC 7946: no CRS member, WGS84 implied
    to_wgs84 = Transformer.from_crs(32618, 4326, always_xy=True)
    for feature, x, y in zip(doc["features"], frame.x, frame.y, strict=True):
        lon, lat = to_wgs84.transform(x, y)
        assert feature["geometry"]["coordinates"] == [
            pytest.approx(lon, abs=1e-7),
            pytest.approx(lat, abs=1e-7),
        ]
        assert -76 < lon < -75 and 37 < lat < 38  # coast of Virginia


def test_zero_detections_give_valid_empty_files(tmp_path: Path) -> None:
    frame = detections_frame([], GRID, "s2_B12")
    assert len(frame) == 0 and tuple(frame.columns) == (*COLUMNS, "geometry")
    paths = write_detections(frame, tmp_path)
    for fmt in ("parquet", "gpkg"):
        back = _read(fmt, paths[fmt])
        assert len(back) == 0 and list(back.columns) == [*COLUMNS, "geometry"], fmt
        assert back.crs.to_epsg() == 32618
    assert str(gpd.read_parquet(paths["parquet"]).dtypes["area_px"]) == "int64"
    assert json.loads(paths["geojson"].read_text())["features"] == []


def test_scene_without_crs(tmp_path: Path, caplog) -> None:
    grid = SceneGrid(50, 40, Affine.identity())
    with caplog.at_level(logging.WARNING, logger="pipeline.write_vectors"):
        frame = detections_frame(DETS[:1], grid, "plain")
        paths = write_detections(frame, tmp_path)
    assert frame.crs is None and np.isnan(frame.lon[0]) and np.isnan(frame.lat[0])
    assert (frame.x[0], frame.y[0]) == (20.5, 10.5)  # pixel coordinates of the pixel centre
    assert "no CRS" in caplog.text
    for fmt in ("parquet", "gpkg"):
        back = _read(fmt, paths[fmt])
        assert back.crs is None and len(back) == 1, fmt
        assert (back.geometry[0].x, back.geometry[0].y) == (20.5, 10.5), fmt
    # GeoJSON is WGS84 by definition: no fake position, the row keeps x/y/row/col
    (feature,) = json.loads(paths["geojson"].read_text())["features"]
    assert feature["geometry"] is None
    assert (feature["properties"]["x"], feature["properties"]["row"]) == (20.5, 10.0)


def test_geographic_scene_lon_lat_equal_x_y(tmp_path: Path) -> None:
    grid = SceneGrid(
        100, 100, Affine(0.001, 0.0, 10.0, 0.0, -0.001, 50.0), CRS.from_epsg(4326).to_wkt(), 4326
    )
    frame = detections_frame(DETS[:1], grid, "geo")
    assert frame.lon[0] == pytest.approx(10.0205) and frame.lat[0] == pytest.approx(49.9895)
    assert (frame.x[0], frame.y[0]) == (pytest.approx(10.0205), pytest.approx(49.9895))
    doc = json.loads(write_detections(frame, tmp_path, formats=["geojson"])["geojson"].read_text())
    assert doc["features"][0]["geometry"]["coordinates"] == [10.0205, 49.9895]
