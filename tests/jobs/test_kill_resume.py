"""Resume after SIGKILL gives the same bytes; failing tiles are retried, then reported.

Real processes: `irscan run` in a subprocess with its own local Ray, killed with SIGKILL
(driver and every process it started) part-way, then run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import psutil
import pytest
import rasterio
import torch
import zarr
from click.testing import CliRunner

from mim_model import MiM
from mim_model.weights import save_safetensors
from pipeline.cli.main import cli
from pipeline.stitch import MASK_NODATA

from ..conftest import UTM_CRS, UTM_TRANSFORM

IRSCAN = [sys.executable, "-c", "from pipeline.cli.main import cli; cli()"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    return save_safetensors(MiM(layout="spatial"), path, metadata={"threshold": "0.5"})


def _scene(path: Path, side_px: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(200, 900, (side_px, side_px)).astype(np.uint16)
    for r, c in rng.integers(4, side_px - 4, (60, 2)):
        data[r - 2 : r + 2, c - 2 : c + 2] = 4000
    with rasterio.open(path, "w", driver="GTiff", count=1, height=side_px, width=side_px, dtype="uint16",
                       crs=UTM_CRS, transform=UTM_TRANSFORM) as dataset:
        dataset.write(data, 1)
    return path


def _job(path: Path, scene: Path, out: Path, weights: Path) -> Path:
    path.write_text(
        f"inputs: [{scene}]\noutput: {out}\n"
        f"scan: {{tile_px: 128, halo_px: 16, batch_size: 4, threshold: 0.485, weights: {weights}, progress: false}}\n"
    )
    return path


def _kill_tree(proc: subprocess.Popen) -> None:
    parent = psutil.Process(proc.pid)
    family = [parent, *parent.children(recursive=True)]
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def _chunk_bytes(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.parent.name != "overviews" and "overviews" not in p.parts
    }


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_bytes(tmp_path: Path, weights: Path) -> None:
    scene = _scene(tmp_path / "scene.tif", 1344)  # 14 x 14 tiles of core 96
    reference = _job(tmp_path / "ref.yaml", scene, tmp_path / "ref", weights)
    killed = _job(tmp_path / "job.yaml", scene, tmp_path / "out", weights)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    done = subprocess.run([*IRSCAN, "run", str(reference)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    ledger = tmp_path / "out" / "scene" / "_irscan" / "tiles.jsonl"
    proc = subprocess.Popen([*IRSCAN, "run", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if ledger.exists() and len(ledger.read_text().splitlines()) >= 40:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    _kill_tree(proc)
    recorded = len(ledger.read_text().splitlines())
    assert 40 <= recorded < 196, recorded
    assert not (tmp_path / "out" / "scene" / "report.json").exists()

    again = subprocess.run([*IRSCAN, "run", str(killed)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "scene" / "report.json").read_text())
    assert report["tiles"]["resumed"] >= 36 and report["tiles"]["done"] == 196

    ref_store, out_store = tmp_path / "ref" / "scene" / "mask.zarr", tmp_path / "out" / "scene" / "mask.zarr"
    ref_bytes, out_bytes = _chunk_bytes(ref_store), _chunk_bytes(out_store)
    assert ref_bytes.keys() == out_bytes.keys()
    different = [k for k in ref_bytes if ref_bytes[k] != out_bytes[k]]
    assert not different, f"{len(different)} files differ, e.g. {different[:3]}"
    a = gpd.read_parquet(tmp_path / "ref" / "scene" / "detections.parquet")
    b = gpd.read_parquet(tmp_path / "out" / "scene" / "detections.parquet")
    assert len(a) > 0
    pd.testing.assert_frame_equal(pd.DataFrame(a.drop(columns="geometry")), pd.DataFrame(b.drop(columns="geometry")))
    assert a.geometry.equals(b.geometry)


def test_failing_tile_is_retried_then_reported_as_nodata(tmp_path: Path, weights: Path, monkeypatch) -> None:
    """A tile whose inference always fails: retried alone, recorded failed, its chunk written
    as nodata, the other tiles done, exit code non-zero naming it (fault injected with the
    runner's IRSCAN_FAIL_TILES drill hook)."""
    scene = _scene(tmp_path / "flaky.tif", 256)
    monkeypatch.setenv("IRSCAN_FAIL_TILES", "flaky/r1_c1")
    result = CliRunner().invoke(cli, ["scan", str(scene), "--out", str(tmp_path / "o"), "--weights", str(weights),
                                      "--tile-px", "128", "--halo-px", "16", "--batch-size", "4"])
    assert result.exit_code != 0
    assert "1 tile(s) failed: flaky/r1_c1" in result.output
    report = json.loads((tmp_path / "o" / "flaky" / "report.json").read_text())
    assert report["tiles"]["failed"] == 1 and report["tiles"]["done"] == 8
    assert report["failed_tiles"][0]["tile"] == "r1_c1"
    records = [json.loads(x) for x in (tmp_path / "o" / "flaky" / "_irscan" / "tiles.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["status"] == "failed"]
    assert failed == [{**failed[0], "tile": "r1_c1", "attempts": 3}]
    mask = zarr.open_group(tmp_path / "o" / "flaky" / "mask.zarr", mode="r")["mask"][:]
    assert np.all(mask[96:192, 96:192] == MASK_NODATA)
    assert not np.any(mask[:96] == MASK_NODATA)
