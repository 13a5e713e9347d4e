"""pipeline.postprocess: max-pooled overviews and statistics of a mask store, threads and Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from affine import Affine
from pyproj import CRS

from pipeline.grid import SceneGrid
from pipeline.postprocess import (
    dask_scheduler,
    overview_factors,
    postprocess_scene,
    scene_statistics,
    write_overviews,
)
from pipeline.stitch import MASK_NODATA
from pipeline.tiling import TilingSpec, plan_tiles
from pipeline.write_zarr import MaskStore, create_mask_store

UTM = Affine(20.0, 0.0, 435720.0, 0.0, -20.0, 4179460.0)
SHAPE = (150, 130)
SPEC = TilingSpec(64, 16)  # core 32: a 5 x 5 chunk grid with clipped edge chunks


def _truth() -> tuple[np.ndarray, np.ndarray]:
    """Known probability (NaN = nodata) and mask, with one tile never written."""
    rng = np.random.default_rng(7)
    prob = rng.random(SHAPE, dtype=np.float32)
    prob[10:14, 40:45] = np.nan  # nodata inside a tile
    prob[32:64, 64:96] = np.nan  # tile r1_c2 all nodata: not written at all
    prob[149, 129] = 1.0  # the last bin includes 1.0
    mask = np.where(np.isnan(prob), MASK_NODATA, prob > 0.5).astype(np.uint8)
    return prob, mask


def _store(path: Path) -> MaskStore:
    grid = SceneGrid(SHAPE[0], SHAPE[1], UTM, CRS.from_epsg(32618).to_wkt(version="WKT2_2019"), 32618)
    store = create_mask_store(path, grid, SPEC, scene_name="scene")
    prob, mask = _truth()
    for tile in plan_tiles(*SHAPE, SPEC):
        if tile.tile_id == "r1_c2":
            continue
        sl = tile.core.to_slices()
        store.write_core(tile, prob[sl], mask[sl])
    return store


def _pooled(prob: np.ndarray, f: int) -> np.ndarray:
    h, w = prob.shape
    padded = np.full((-(-h // f) * f, -(-w // f) * f), np.nan, dtype=np.float32)
    padded[:h, :w] = prob
    blocks = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f)
    return np.fmax.reduce(np.fmax.reduce(blocks, axis=3), axis=1)


@pytest.fixture
def store(tmp_path: Path) -> MaskStore:
    return _store(tmp_path / "scene" / "mask.zarr")


def test_overview_factors() -> None:
    assert overview_factors(150, 130, 32) == [2, 4, 8]  # 75, 38, 19 <= 32
    assert overview_factors(32, 20, 32) == []
    assert overview_factors(33, 1, 32) == [2]
    assert overview_factors(40000, 40000, 384) == [2, 4, 8, 16, 32, 64, 128]


def _check_overviews(store: MaskStore, levels: list[dict[str, Any]]) -> None:
    prob, _ = _truth()
    assert [lv["factor"] for lv in levels] == [2, 4, 8]
    group = zarr.open_group(str(store.path / "overviews"), mode="r")
    assert group.attrs["levels"] == levels
    for lv in levels:
        f = lv["factor"]
        arr = group[f"probability_{f}"]
        expected = _pooled(prob, f)
        assert arr.shape == expected.shape == (-(-SHAPE[0] // f), -(-SHAPE[1] // f)) == tuple(lv["shape"])
        assert arr.chunks == (32, 32) and arr.dtype == np.float32
        np.testing.assert_array_equal(arr[...], expected)  # NaN where all pooled pixels are nodata
        assert arr.metadata.dimension_names == (f"y_{f}", f"x_{f}")
        assert Affine(*arr.attrs["transform"]) == UTM @ Affine.scale(f) == Affine(*lv["transform"])
        assert arr.attrs["grid_mapping"] == f"spatial_ref_{f}"
        np.testing.assert_allclose(group[f"x_{f}"][...], UTM.c + 20.0 * f * (np.arange(arr.shape[1]) + 0.5))
        np.testing.assert_allclose(group[f"y_{f}"][...], UTM.f - 20.0 * f * (np.arange(arr.shape[0]) + 0.5))
    # the all-nodata tile (rows 32-63, cols 64-95) is NaN at 2x, a target pixel pools through
    assert np.isnan(group["probability_2"][16:32, 32:48]).all()
    assert group["probability_8"][18, 16] == 1.0


def test_overviews_threads_values_attrs_and_georeference(store: MaskStore) -> None:
    levels = write_overviews(store, scheduler="threads")
    _check_overviews(store, levels)
    pytest.importorskip("rioxarray")  # registers .rio (not an irscan dependency)
    xr = pytest.importorskip("xarray")

    ds = xr.open_zarr(store.path, group="overviews", consolidated=False)
    da4 = ds["probability_4"]
    assert da4.rio.crs.to_epsg() == 32618
    assert da4.rio.transform() == UTM @ Affine.scale(4)
    # running again gives the same store (and replaces stale levels)
    assert write_overviews(store, scheduler="sync") == levels
    _check_overviews(store, levels)


def test_reads_stay_chunked(store: MaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    original = zarr.Array.__getitem__

    def recording(self: zarr.Array, selection: Any) -> Any:  # type: ignore[type-arg]
        out = original(self, selection)
        sizes.append(int(np.size(out)))
        return out

    monkeypatch.setattr(zarr.Array, "__getitem__", recording)
    write_overviews(store, scheduler="threads")
    scene_statistics(store, scheduler="threads")
    assert len(sizes) >= 2 * 25 and max(sizes) <= 32 * 32


def _check_stats(stats: dict[str, Any]) -> None:
    prob, mask = _truth()
    valid = prob[~np.isnan(prob)]
    counts, edges = np.histogram(valid, bins=20, range=(0.0, 1.0))
    pixels = SHAPE[0] * SHAPE[1]
    nodata = int((mask == MASK_NODATA).sum())
    assert stats["pixels"] == pixels and stats["nodata_px"] == nodata == 4 * 5 + 32 * 32
    assert stats["valid_px"] == pixels - nodata
    assert stats["nodata_fraction"] == pytest.approx(nodata / pixels)
    assert stats["target_px"] == int((mask == 1).sum())
    assert stats["target_fraction"] == pytest.approx(stats["target_px"] / (pixels - nodata))
    assert stats["probability_max"] == 1.0
    assert stats["probability_histogram"]["counts"] == counts.tolist()
    assert sum(stats["probability_histogram"]["counts"]) == pixels - nodata
    np.testing.assert_allclose(stats["probability_histogram"]["bin_edges"], edges)
    json.dumps(stats)


def test_statistics_threads(store: MaskStore) -> None:
    _check_stats(scene_statistics(store, scheduler="threads"))


def test_empty_store_statistics_and_small_scene(tmp_path: Path) -> None:
    grid = SceneGrid(20, 30, UTM, None, None)
    store = create_mask_store(tmp_path / "m.zarr", grid, SPEC, scene_name="s")
    stats = scene_statistics(store, scheduler="sync", bins=4)
    assert stats["nodata_fraction"] == 1.0 and stats["valid_px"] == 0 and stats["target_fraction"] is None
    assert stats["probability_max"] is None and stats["probability_histogram"]["counts"] == [0] * 4
    assert write_overviews(store, scheduler="sync") == []  # fits in one chunk


def test_postprocess_scene_merges_into_report(store: MaskStore) -> None:
    report = store.path.parent / "report.json"
    report.write_text(json.dumps({"scene": "scene", "detections": 3}))
    result = postprocess_scene(store.path.parent, scheduler="threads")
    merged = json.loads(report.read_text())
    assert merged["scene"] == "scene" and merged["detections"] == 3
    assert merged["statistics"] == result["statistics"] and merged["overviews"] == result["overviews"]
    _check_stats(merged["statistics"])


def test_scheduler_choice_without_ray() -> None:
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        pytest.skip("Ray is running in this process")
    assert dask_scheduler("auto") == ("threads", "threads")
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="Ray is not initialised"):
        dask_scheduler("ray")
    with pytest.raises(InputError, match="auto/ray/threads/sync"):
        dask_scheduler("processes")  # type: ignore[arg-type]


@pytest.mark.usefixtures("local_ray")
def test_on_ray(tmp_path: Path) -> None:
    """dask on Ray (ray_dask_get) when Ray is initialised: same values as the threaded run."""
    assert dask_scheduler("auto")[1] == "ray"
    store = _store(tmp_path / "scene" / "mask.zarr")
    levels = write_overviews(store)  # auto -> Ray
    _check_overviews(store, levels)
    _check_stats(scene_statistics(store, scheduler="ray"))
