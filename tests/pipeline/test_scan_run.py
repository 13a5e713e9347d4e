"""`irscan scan` end to end on a real local Ray: coverage of odd shapes, georeferencing,
nodata, bad input. The network here has random weights: these tests check the mechanics
(every pixel written exactly once, outputs valid and placed right), not accuracy
(test_scan_accuracy.py does that with the shipped weights)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
import zarr
from affine import Affine
from click.testing import CliRunner

from mim_model.weights import weights_sha256
from pipeline.cli.main import cli
from pipeline.stitch import MASK_NODATA

from ..conftest import UTM_CRS, UTM_TRANSFORM


def _scan(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["scan", *args], catch_exceptions=False)
    return result.exit_code, result.output


def _write(path: Path, data: np.ndarray, **profile) -> Path:
    base = {"driver": "GTiff", "count": 1, "height": data.shape[0], "width": data.shape[1],
            "dtype": data.dtype.name, "crs": UTM_CRS, "transform": UTM_TRANSFORM}
    base.update(profile)
    with rasterio.open(path, "w", **base) as dataset:
        dataset.write(data, 1)
    return path


@pytest.mark.parametrize("shape", [(1, 1), (63, 65), (700, 300)])
def test_any_shape_is_covered_exactly(local_ray, random_weights, tmp_path, shape):
    rng = np.random.default_rng(1)
    scene = _write(tmp_path / "odd.tif", rng.integers(100, 4000, shape).astype(np.uint16))
    code, output = _scan([str(scene), "--out", str(tmp_path / "out"), "--weights", str(random_weights),
                          "--tile-px", "128", "--halo-px", "16", "--batch-size", "4"])
    assert code == 0, output
    out = tmp_path / "out" / "odd"
    group = zarr.open_group(out / "mask.zarr", mode="r")
    mask, prob = group["mask"][:], group["probability"][:]
    assert mask.shape == prob.shape == shape
    assert group["mask"].chunks == (96, 96)
    # every pixel written: no nodata fill left, probabilities in [0, 1]
    assert not np.any(mask == MASK_NODATA)
    assert np.all((prob >= 0) & (prob <= 1))
    report = json.loads((out / "report.json").read_text())
    n_tiles = -(-shape[0] // 96) * -(-shape[1] // 96)
    assert report["tiles"] == {"total": n_tiles, "done": n_tiles, "skipped": 0, "failed": 0, "resumed": 0}
    assert report["weights_path"] == str(random_weights)
    assert report["weights_sha256"] == weights_sha256(random_weights)
    frame = gpd.read_parquet(out / "detections.parquet")
    assert len(frame) == report["detections"]
    for suffix in ("gpkg", "geojson"):
        assert len(gpd.read_file(out / f"detections.{suffix}")) == len(frame)
    assert (out / "quicklook.png").stat().st_size > 0
    assert f"{n_tiles} tiles" in output


def test_crs_and_transform_round_trip_and_vectors_are_placed(local_ray, random_weights, tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(100, 300, (300, 260)).astype(np.uint16)
    data[100:104, 50:54] = 4000  # something bright for the random net to react to
    scene = _write(tmp_path / "geo.tif", data)
    code, output = _scan([str(scene), "--out", str(tmp_path / "out"), "--weights", str(random_weights),
                          "--tile-px", "128", "--halo-px", "32"])
    assert code == 0, output
    group = zarr.open_group(tmp_path / "out" / "geo" / "mask.zarr", mode="r")
    assert Affine(*group.attrs["transform"]) == UTM_TRANSFORM
    assert group.attrs["epsg"] == 32618
    assert rasterio.crs.CRS.from_wkt(group.attrs["crs_wkt"]) == rasterio.crs.CRS.from_epsg(32618)
    frame = gpd.read_parquet(tmp_path / "out" / "geo" / "detections.parquet")
    assert frame.crs.to_epsg() == 32618
    for _, det in frame.iterrows():
        x, y = UTM_TRANSFORM @ (det["col"] + 0.5, det["row"] + 0.5)
        assert det["x"] == pytest.approx(x) and det["y"] == pytest.approx(y)
        assert det.geometry.x == pytest.approx(x)


def test_nodata_tiles_are_skipped_and_never_detected(local_ray, random_weights, tmp_path):
    data = np.full((256, 384), 1000, np.uint16)
    data[:, 192:] = 0  # right half is nodata: its tiles never reach the model
    data[50:53, 60:63] = 5000
    scene = _write(tmp_path / "half.tif", data, nodata=0)
    code, output = _scan([str(scene), "--out", str(tmp_path / "out"), "--weights", str(random_weights),
                          "--tile-px", "128", "--halo-px", "0", "--threshold", "0.01"])
    assert code == 0, output
    out = tmp_path / "out" / "half"
    report = json.loads((out / "report.json").read_text())
    assert report["tiles"]["skipped"] == 2 and report["tiles"]["done"] == 4  # tile column 1 is half valid
    mask = zarr.open_group(out / "mask.zarr", mode="r")["mask"][:]
    assert np.all(mask[:, 192:] == MASK_NODATA)
    assert not np.any(mask[:, :192] == MASK_NODATA)
    frame = gpd.read_parquet(out / "detections.parquet")
    assert (frame["col_max"] < 192).all()


def test_scene_without_crs_runs_in_pixel_coordinates(local_ray, random_weights, tmp_path, caplog):
    data = np.random.default_rng(3).integers(100, 4000, (100, 100)).astype(np.uint16)
    scene = tmp_path / "nocrs.tif"
    with rasterio.open(scene, "w", driver="GTiff", count=1, height=100, width=100, dtype="uint16") as dataset:
        dataset.write(data, 1)
    code, output = _scan([str(scene), "--out", str(tmp_path / "out"), "--weights", str(random_weights),
                          "--tile-px", "128", "--halo-px", "16", "--threshold", "0.01"])
    assert code == 0, output
    frame = gpd.read_parquet(tmp_path / "out" / "nocrs" / "detections.parquet")
    assert frame.crs is None
    assert frame["lon"].isna().all()


def _error_line(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["scan", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output.strip()


def test_bad_inputs_fail_with_one_clear_line(random_weights, tmp_path):
    good = _write(tmp_path / "good.tif", np.ones((64, 64), np.uint16))
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    rotated = _write(tmp_path / "rotated.tif", np.ones((64, 64), np.uint16),
                     transform=Affine(20.0, 5.0, 435720.0, 5.0, -20.0, 4179460.0))
    cases = [
        ([str(tmp_path / "missing.tif")], "missing.tif"),
        ([str(text)], "notes.tif"),
        ([str(rotated)], "rotated.tif"),
        ([str(good), "--band", "3"], "band"),
        ([str(good), "--tile-px", "100"], "tile_px"),
        ([str(good), "--tile-px", "128", "--halo-px", "64"], "halo_px"),
        ([str(good), "--input-scale", "0"], "input_scale: expected a factor from 0.25 to 8, got 0.0"),
        ([str(good), "--tile-px", "64", "--halo-px", "0", "--input-scale", "1.5"], "tile_px: tiles are resized by"),
        ([str(good), "--window-px", "640"], "window_px: expected at most tile_px (512), got 640"),
        ([str(good), "--window-px", "256", "--window-halo-px", "80"], "window_halo_px: expected at most halo_px (64), got 80"),
        ([str(good), "--window-px", "32", "--window-halo-px", "16"], "window_px: expected more than 2 * window_halo_px"),
        ([str(good), "--window-px", "96", "--input-scale", "1"], "window_px: windows are resized by input_scale 1.0"),
    ]
    for args, needle in cases:
        code, output = _error_line([*args, "--out", str(tmp_path / "o"), "--weights", str(random_weights)])
        assert code != 0, (args, output)
        assert needle in output, (args, output)
        assert len(output.splitlines()) == 1, output


def test_output_folder_under_a_file_fails_with_one_line_before_any_scene_is_read(random_weights, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, output = _error_line([str(tmp_path / "missing.tif"), "--out", str(blocker / "o"),
                                "--weights", str(random_weights)])
    assert code != 0
    assert output == f"irscan: error: output folder {blocker / 'o'}: expected a folder (or a place to make one), " \
                     f"got a file at {blocker}"
    assert blocker.read_text() == "x"


def test_weights_of_another_network_fail_with_one_line_before_any_output(tmp_path):
    from safetensors.torch import save_file

    scene = _write(tmp_path / "s.tif", np.ones((64, 64), np.uint16))
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(other))
    code, output = _error_line([str(scene), "--out", str(tmp_path / "o"), "--weights", str(other)])
    assert code != 0
    assert output.startswith(f"irscan: error: {other}: weights do not match the MiM network: ")
    assert len(output.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # checked before the folder, so before Ray and its actors


def test_a_ray_address_with_no_cluster_fails_with_one_line_before_any_output(random_weights, tmp_path):
    """Ray itself retries an unreachable head for minutes; irscan refuses it at once. A fresh
    process: a Ray started by other tests here would be kept instead of the address."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scene = _write(tmp_path / "s.tif", np.ones((64, 64), np.uint16))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "scan", str(scene), "--out", str(tmp_path / "o"),
         "--weights", str(random_weights), "--ray-address", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"irscan: error: ray address 127.0.0.1:{port}: expected a running Ray head there, "
                                   f"got Connection refused connecting to 127.0.0.1:{port}")
    assert not (tmp_path / "o").exists()
    code, output = _error_line([str(scene), "--out", str(tmp_path / "o"), "--weights", str(random_weights),
                                "--ray-address", "head-without-port"])
    assert code != 0
    assert output == "irscan: error: ray address: expected auto, HOST:PORT or ray://HOST:PORT, got 'head-without-port'"


def test_existing_output_is_refused_unless_overwrite(local_ray, random_weights, tmp_path):
    scene = _write(tmp_path / "again.tif", np.random.default_rng(4).integers(1, 999, (64, 64)).astype(np.uint16))
    args = [str(scene), "--out", str(tmp_path / "out"), "--weights", str(random_weights),
            "--tile-px", "64", "--halo-px", "0"]
    assert _scan(args)[0] == 0
    code, output = _error_line(args)
    assert code != 0 and "--overwrite" in output
    assert _scan([*args, "--overwrite"])[0] == 0


def test_tta_flips_scan_is_the_flip_average_of_the_tiles(local_ray, random_weights, tmp_path):
    """`--tta-flips` through Ray: a one-tile scene's probabilities equal the mean of the
    network's output on the tile and its flips (computed here without Ray)."""
    from pipeline.infer import InferenceSpec, TilePredictor

    rng = np.random.default_rng(3)
    data = rng.integers(1000, 1200, (96, 96)).astype(np.uint16)
    data[20:23, 70:73] = 3000
    scene = _write(tmp_path / "one.tif", data)
    code, output = _scan([str(scene), "--out", str(tmp_path / "out"), "--weights", str(random_weights),
                          "--tile-px", "128", "--halo-px", "16", "--batch-size", "2", "--tta-flips",
                          "--norm", "fixed", "--norm-low", "1000", "--norm-high", "3000"])
    assert code == 0, output
    out = tmp_path / "out" / "one"
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["inference"]["flip_tta"] is True
    prob = zarr.open_group(out / "mask.zarr", mode="r")["probability"][:]
    # the tile as the runner builds it: the scene at [16, 112) of a 128 px tile, the halo and
    # the rest filled by reflection (pipeline.scene)
    tile = np.pad(np.clip((data.astype(np.float32) - 1000) / 2000, 0, 1), 16, mode="reflect")[None]
    expected = TilePredictor(InferenceSpec(weights_path=str(random_weights), device="cpu", flip_tta=True,
                                           torch_threads=2)).predict(tile)[0, 16:112, 16:112]
    plain = TilePredictor(InferenceSpec(weights_path=str(random_weights), device="cpu",
                                        torch_threads=2)).predict(tile)[0, 16:112, 16:112]
    np.testing.assert_allclose(prob, expected, atol=2e-3)
    assert np.abs(prob - plain).max() > 1e-3  # and not the plain result


def test_window_scan_runs_each_tile_as_windows(local_ray, random_weights, tmp_path):
    """`--window-px` through Ray: a one-tile scene's probabilities are those of the tile run
    as 64 px windows (computed here without Ray), not those of the whole tile, and the
    report records the window."""
    from pipeline.infer import InferenceSpec, TilePredictor

    rng = np.random.default_rng(6)
    data = rng.integers(1000, 1200, (96, 96)).astype(np.uint16)
    data[20:23, 70:73] = 3000
    scene = _write(tmp_path / "one.tif", data)
    code, output = _scan([str(scene), "--out", str(tmp_path / "out"), "--weights", str(random_weights),
                          "--tile-px", "128", "--halo-px", "16", "--window-px", "64", "--window-halo-px", "16",
                          "--norm", "fixed", "--norm-low", "1000", "--norm-high", "3000"])
    assert code == 0, output
    out = tmp_path / "out" / "one"
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["inference"]["window_px"] == 64
    prob = zarr.open_group(out / "mask.zarr", mode="r")["probability"][:]
    tile = np.pad(np.clip((data.astype(np.float32) - 1000) / 2000, 0, 1), 16, mode="reflect")[None]
    windowed = TilePredictor(InferenceSpec(weights_path=str(random_weights), device="cpu", torch_threads=2,
                                           window_px=64, window_halo_px=16), margin_px=16).predict(tile)
    whole = TilePredictor(InferenceSpec(weights_path=str(random_weights), device="cpu",
                                        torch_threads=2)).predict(tile)
    np.testing.assert_allclose(prob, windowed[0, 16:112, 16:112], atol=2e-3)
    assert np.abs(prob - whole[0, 16:112, 16:112]).max() > 1e-2
