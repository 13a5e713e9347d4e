"""pipeline.stitch + pipeline.write_zarr: core == chunk, attributes, nodata, resume, concurrency."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from pipeline.errors import InputError, OutputExistsError
from pipeline.grid import SceneGrid, pixel_centre_x, pixel_centre_y
from pipeline.normalize import NormalizationSpec, apply, compute_stats
from pipeline.scene import SceneReader, open_scene, read_window
from pipeline.stitch import MASK_NODATA, core_is_nodata, crop_core, nodata_core, stitch_core, threshold_mask
from pipeline.tiling import TilingSpec, Window, plan_tiles, tile_at
from pipeline.vectorize import vectorize_chunk
from pipeline.write_zarr import create_mask_store, open_mask_store, write_core

from . import _zarr_worker

UTM = Affine(20.0, 0.0, 435720.0, 0.0, -20.0, 4179460.0)


def _grid(shape: tuple[int, int] = (150, 130)) -> SceneGrid:
    from pyproj import CRS

    return SceneGrid(
        shape[0], shape[1], UTM, CRS.from_epsg(32618).to_wkt(version="WKT2_2019"), 32618
    )


def _chunk_keys(array_dir: Path) -> set[tuple[int, int]]:
    return {(int(p.parent.name), int(p.name)) for p in (array_dir / "c").glob("*/*") if p.is_file()}


# ------------------------------------------------------------------ stitch (pure)


def test_stitch_core_crops_thresholds_and_masks_nodata() -> None:
    tile = tile_at(68, 70, TilingSpec(64, 16), 2, 2)  # edge core 4 x 6
    assert tile.core == Window(64, 64, 4, 6)
    prob = np.zeros((64, 64), dtype=np.float32)
    prob[16, 16] = 0.9
    prob[16, 17] = 0.5  # not > 0.5
    valid = np.ones((64, 64), dtype=bool)
    valid[17, 16] = False
    prob[17, 16] = 0.99  # nodata never a target
    p, m = stitch_core(tile, prob, valid)
    assert p.shape == m.shape == (4, 6) and p.dtype == np.float32 and m.dtype == np.uint8
    assert m[0, 0] == 1 and m[0, 1] == 0 and m[1, 0] == MASK_NODATA and np.isnan(p[1, 0])
    assert (m[2:] == 0).all()
    with pytest.raises(InputError, match=r"expected an array of shape \(64, 64\), got \(60, 64\)"):
        crop_core(tile, np.zeros((60, 64)))
    np_, nm = nodata_core(tile)
    assert np.isnan(np_).all() and (nm == MASK_NODATA).all()


def test_threshold_mask_of_the_stored_probability_is_the_mask_written_at_that_threshold() -> None:
    tile = tile_at(128, 128, TilingSpec(64, 16), 1, 1)
    rng = np.random.default_rng(3)
    prob = rng.random((64, 64)).astype(np.float32)
    valid = rng.random((64, 64)) > 0.2
    stored, _ = stitch_core(tile, prob, valid, threshold=0.5)
    for threshold in (0.1, 0.5, 0.9):
        _, written = stitch_core(tile, prob, valid, threshold=threshold)
        again = threshold_mask(stored, threshold)
        assert np.array_equal(again, written) and 0 < int((again == 1).sum()) < again.size


# ------------------------------------------------------------------ store layout


def test_round_trip_attributes_and_layout(tmp_path: Path) -> None:
    grid, spec = _grid(), TilingSpec(64, 8)
    path = tmp_path / "mask.zarr"
    create_mask_store(path, grid, spec, scene_name="s")
    store = open_mask_store(path)
    assert store.grid == grid  # CRS WKT, EPSG and transform exactly preserved
    assert store.spec == spec and store.scene_name == "s"
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    attrs = meta["attributes"]
    assert attrs["crs_wkt"] == grid.crs_wkt and attrs["epsg"] == 32618
    assert attrs["transform"] == [20.0, 0.0, 435720.0, 0.0, -20.0, 4179460.0]
    assert attrs["geotransform"] == [435720.0, 20.0, 0.0, 4179460.0, 0.0, -20.0]
    for name, dtype in (("probability", "float32"), ("mask", "uint8")):
        arr = store.group[name]
        assert arr.shape == (150, 130) and arr.chunks == (48, 48) and str(arr.dtype) == dtype
        assert arr.shards is None
        assert arr.metadata.dimension_names == ("y", "x")
        assert arr.attrs["grid_mapping"] == "spatial_ref"
    assert store.mask.fill_value == MASK_NODATA and np.isnan(store.probability.fill_value)
    np.testing.assert_array_equal(store.group["x"][:], pixel_centre_x(UTM, 0, 130))
    np.testing.assert_array_equal(store.group["y"][:], pixel_centre_y(UTM, 0, 150))
    ref = store.group["spatial_ref"].attrs
    assert ref["crs_wkt"] == grid.crs_wkt and ref["GeoTransform"].split() == [
        "435720.0",
        "20.0",
        "0.0",
        "4179460.0",
        "0.0",
        "-20.0",
    ]
    assert ref["grid_mapping_name"] == "transverse_mercator"


def test_each_tile_writes_exactly_its_chunk(tmp_path: Path) -> None:
    grid, spec = _grid((150, 130)), TilingSpec(64, 8)
    store = create_mask_store(tmp_path / "mask.zarr", grid, spec, scene_name="s")
    assert store.chunk_grid_shape == (4, 3)
    written = set()
    for tile in plan_tiles(150, 130, spec):
        prob = np.full((64, 64), 0.25, dtype=np.float32)
        store.write_core(tile, *stitch_core(tile, prob))
        written.add(tile.chunk_index)
        assert _chunk_keys(tmp_path / "mask.zarr" / "mask") == written
        assert _chunk_keys(tmp_path / "mask.zarr" / "probability") == written
    assert (store.probability[:] == 0.25).all() and (store.mask[:] == 0).all()


def test_write_core_rejects_misaligned_or_wrong_shape(tmp_path: Path) -> None:
    store = create_mask_store(tmp_path / "mask.zarr", _grid(), TilingSpec(64, 8), scene_name="s")
    other = tile_at(150, 130, TilingSpec(64, 0), 1, 1)  # core 64 at 64: not a chunk of core 48
    with pytest.raises(InputError, match="is not chunk"):
        write_core(store, other, np.zeros((64, 64)), np.zeros((64, 64)))
    tile = tile_at(150, 130, TilingSpec(64, 8), 0, 0)
    with pytest.raises(InputError, match=r"expected core arrays of shape \(48, 48\)"):
        write_core(store, tile, np.zeros((48, 40)), np.zeros((48, 48)))


def test_exist_modes(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    grid, spec = _grid(), TilingSpec(64, 8)
    store = create_mask_store(path, grid, spec, scene_name="s")
    tile = tile_at(150, 130, spec, 0, 0)
    store.write_core(tile, *stitch_core(tile, np.ones((64, 64))))
    with pytest.raises(OutputExistsError, match=f"{path}: already exists; use --overwrite"):
        create_mask_store(path, grid, spec, scene_name="s")
    resumed = create_mask_store(path, grid, spec, scene_name="s", exist="resume")
    assert (resumed.mask[:48, :48] == 1).all()  # earlier work kept
    with pytest.raises(OutputExistsError, match=r"does not match this scan \(tiling"):
        create_mask_store(path, grid, TilingSpec(128, 8), scene_name="s", exist="resume")
    fresh = create_mask_store(path, grid, spec, scene_name="s", exist="overwrite")
    assert (fresh.mask[:] == MASK_NODATA).all()
    with pytest.raises(InputError, match="not an irscan mask store"):
        open_mask_store(tmp_path / "nothing.zarr")


# ------------------------------------------------------------------ end to end (no model)


def test_identity_model_reproduces_normalised_scene(make_scene, tmp_path: Path) -> None:
    """read tiles -> normalise -> identity 'model' -> stitch -> write == normalised whole scene."""
    data = np.random.default_rng(1).uniform(0, 1000, size=(130, 100)).astype("uint16")
    data[:40, :40] = 0  # nodata block: covers all of chunk (0, 0)
    scene = open_scene(make_scene((130, 100), data=data, nodata=0))
    stats = compute_stats(scene, NormalizationSpec(low_pct=0, high_pct=100))
    spec = TilingSpec(64, 12)  # core 40
    store = create_mask_store(tmp_path / "mask.zarr", scene.grid, spec, scene_name=scene.name)
    skipped = []
    with SceneReader(scene) as reader:
        for tile in plan_tiles(130, 100, spec):
            data_tile = reader.read_tile(tile)
            if core_is_nodata(tile, data_tile.valid):
                skipped.append(tile.tile_id)  # nothing to keep: the store's fill says nodata
                continue
            prob = apply(data_tile.pixels, stats)  # identity model
            store.write_core(tile, *stitch_core(tile, prob, data_tile.valid))
    assert skipped == ["r0_c0"]
    whole = read_window(scene, Window(0, 0, 130, 100))
    expected = apply(whole.pixels, stats)
    got = store.probability[:]
    np.testing.assert_array_equal(got[whole.valid], expected[whole.valid])
    assert np.isnan(got[~whole.valid]).all()
    mask = store.mask[:]
    assert (mask[~whole.valid] == MASK_NODATA).all()
    np.testing.assert_array_equal(mask[whole.valid], (expected[whole.valid] > 0.5).astype(np.uint8))
    assert (0, 0) not in _chunk_keys(tmp_path / "mask.zarr" / "mask")


def test_writers_in_different_processes(tmp_path: Path) -> None:
    shape, spec = (200, 170), TilingSpec(64, 8)
    path = tmp_path / "mask.zarr"
    create_mask_store(path, _grid(shape), spec, scene_name="s")
    indices = [t.chunk_index for t in plan_tiles(*shape, spec)]
    halves = [indices[0::2], indices[1::2]]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        done = list(
            pool.map(_zarr_worker.write_tiles, [str(path)] * 2, [shape] * 2, [spec] * 2, halves)
        )
    assert sum(done) == len(indices)
    prob = open_mask_store(path).probability[:]
    for i, j in indices:
        core = tile_at(*shape, spec, i, j).core
        assert (prob[core.to_slices()] == np.float32((i + j) / 100.0)).all()


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray
def test_xarray_places_the_store(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    grid = _grid()
    create_mask_store(tmp_path / "mask.zarr", grid, TilingSpec(64, 8), scene_name="s")
    ds = xr.open_zarr(tmp_path / "mask.zarr", consolidated=False)
    assert ds["probability"].dims == ("y", "x")
    assert "spatial_ref" in ds.coords
    assert ds["probability"].rio.crs.to_epsg() == 32618
    assert tuple(ds["probability"].rio.transform(recalc=True))[:6] == tuple(UTM)[:6]
    assert float(ds.x[0]) == 435730.0 and float(ds.y[0]) == 4179450.0


def test_40000_square_store_is_metadata_only(tmp_path: Path) -> None:
    """A 40000 x 40000 scene: creating, writing two tiles and vectorising stays tiny."""
    shape, spec = (40000, 40000), TilingSpec(512, 64)
    path = tmp_path / "mask.zarr"
    store = create_mask_store(path, _grid(shape), spec, scene_name="big")
    assert store.chunk_grid_shape == (105, 105)
    prob = np.zeros((512, 512), dtype=np.float32)
    prob[64:70, 64:70] = 0.9  # 6 x 6 object at the core's upper-left corner
    for i, j in ((104, 104), (50, 7)):
        tile = tile_at(*shape, spec, i, j)
        store.write_core(tile, *stitch_core(tile, prob))
    (edge,) = vectorize_chunk(store, 104, 104)
    assert (edge.row_min, edge.col_min, edge.area_px) == (39936, 39936, 36)
    assert vectorize_chunk(store, 0, 0) == []  # unwritten chunk: fill = nodata
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size < 2_000_000  # x/y coordinates (compressed) dominate
