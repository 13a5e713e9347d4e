"""Real test of the product: a 4000 x 4000 scene with a real Sentinel-2 SWIR background and
real SIRST targets pasted at known map coordinates (some across tile borders), scanned with
the shipped weights on a real local Ray: targets found within 3 px, none reported twice,
georeferencing exact, the nodata part of the scene skipped.

The bottom 61.6 % of the scene is nodata (as in the corners of real Landsat/Sentinel-2
products): it keeps the 4000 x 4000 grid, chunk layout and coordinates while the network
runs on 44 tiles only, which keeps the test at about 3 minutes on 2 CPU cores.

Recall: the issue's target is >= 0.90. The first weights (SIRST test IoU 0.54) found 46 of
60 (0.77) on textured land, the first fine-tuned ones (IoU 0.61) 41 of 60 (0.68), the ones
trained with synthetic crops on procedural land clutter and Landsat thermal backgrounds
(never this Sentinel-2 crop; IoU 0.73) 47 of 60 (0.78), the same recipe refit on SIRST's
train + val (IoU 0.71; still the SIRST weights) 48 of 60 (0.80), the scan's first own weights
(synthetic crops with up to 24 targets; chosen on a validation scene of val-split targets,
scored on this one once) 51 of 60 (0.85), the average of three fine-tunes, two of them on
1024 px crops, 53 of 60 (0.883), and the scan weights shipped now (the average of seven, four
with targets on busy ground and one trained with the Tversky loss; chosen on seven validation
scenes, scored here once) 55 of 60 (0.917). The floor below is the issue's target: it guards
against regressions of the pipeline and the weights.
"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from click.testing import CliRunner

from mim_model.weights import DEFAULT_SCAN_WEIGHTS_PATH, weights_sha256
from pipeline.cli.main import cli

from ..scene_builder import build_scene, load_target_chips, shared_data_dir

SIDE_PX = 4000
CORE_PX = 384  # tile 512, halo 64
VALID_ROWS = 4 * CORE_PX  # rows below this are nodata
RECALL_FLOOR = 0.90  # the target; measured 0.917 (55/60) with the packaged scan weights


@pytest.fixture(scope="module")
def scene_with_truth(tmp_path_factory):
    data = shared_data_dir()
    if data is None:
        pytest.skip("shared data (../shared/data) not available")
    chips = load_target_chips(data / "sirst", "test")
    path = tmp_path_factory.mktemp("scene") / "s2_b12_mosaic.tif"
    truth = build_scene(path, SIDE_PX, SIDE_PX, chips, count=60, core_px=CORE_PX, straddle=24, seed=11,
                        nodata_band=(VALID_ROWS, SIDE_PX))
    return path, truth


def test_targets_found_once_with_exact_georeferencing(scene_with_truth, tmp_path):
    assert DEFAULT_SCAN_WEIGHTS_PATH.is_file(), "the packaged scan weights are missing"
    path, truth = scene_with_truth
    straddling = [t for t in truth if min(t.row % CORE_PX, CORE_PX - t.row % CORE_PX) < 4
                  or min(t.col % CORE_PX, CORE_PX - t.col % CORE_PX) < 4]
    assert len(truth) >= 50 and len(straddling) >= 10
    result = CliRunner().invoke(
        cli, ["scan", str(path), "--out", str(tmp_path), "--tile-px", "512", "--halo-px", "64",
              "--batch-size", "4"], catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / path.stem
    frame = gpd.read_parquet(out / "detections.parquet")
    rows, cols = frame["row"].to_numpy(), frame["col"].to_numpy()
    found, matched_by = 0, []
    for target in truth:
        dist = np.hypot(rows - target.row, cols - target.col)
        close = np.flatnonzero(dist < 3.0)
        matched_by.append(len(close))
        found += bool(len(close))
    recall = found / len(truth)
    missed_straddling = sum(
        1 for t in straddling if not np.any(np.hypot(rows - t.row, cols - t.col) < 3.0)
    )
    report = json.loads((out / "report.json").read_text())
    print(f"recall {recall:.3f} ({found}/{len(truth)}), straddling missed {missed_straddling}/"
          f"{len(straddling)}, detections {len(frame)}, {report['mpx_per_s']} Mpx/s")
    assert recall >= RECALL_FLOOR, f"found {found} of {len(truth)} targets within 3 px"
    assert report["weights_sha256"] == weights_sha256(DEFAULT_SCAN_WEIGHTS_PATH), "scan ran other weights"
    assert report["weights_path"] == str(DEFAULT_SCAN_WEIGHTS_PATH)
    assert (report["threshold"], report["input_scale"]) == (0.65, 2.0)  # stored with the scan weights
    tiles_per_row = -(-SIDE_PX // CORE_PX)
    assert report["tiles"]["done"] == 4 * tiles_per_row
    assert report["tiles"]["skipped"] == tiles_per_row * tiles_per_row - 4 * tiles_per_row
    assert (frame["row_max"] < VALID_ROWS).all()
    assert max(matched_by) == 1, "a target was reported more than once"
    # map coordinates of each detection follow the scene's transform at pixel centres
    with rasterio.open(path) as src:
        transform, crs = src.transform, src.crs
    group = zarr.open_group(out / "mask.zarr", mode="r")
    assert Affine(*group.attrs["transform"]) == transform
    assert rasterio.crs.CRS.from_wkt(group.attrs["crs_wkt"]) == crs
    assert gpd.read_file(out / "detections.gpkg").crs == frame.crs == crs
    for target in truth:
        x, y = transform @ (target.col + 0.5, target.row + 0.5)
        assert (x, y) == pytest.approx((target.x, target.y))
    near = frame[np.hypot(frame["x"] - truth[0].x, frame["y"] - truth[0].y) < 3 * transform.a]
    assert len(near) <= 1
