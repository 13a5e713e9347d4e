"""``irscan run JOB.yaml`` end to end on a local Ray (CPU, tiny scenes, untrained weights):
run record, post-processing, and a second run that resumes everything and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from pipeline.cli.main import cli
from pipeline.lock import LOCK_NAME


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the run joins it (and post-processes with dask on Ray)
def test_run_then_resume(tmp_path: Path, make_scene) -> None:
    import torch

    from mim_model import MiM
    from mim_model.weights import save_safetensors

    torch.manual_seed(0)
    save_safetensors(MiM(layout="spatial"), tmp_path / "w.safetensors", metadata={"threshold": "0.5"})
    make_scene(shape=(90, 100), targets=[(20, 30)], name="a.tif")
    make_scene(shape=(60, 50), targets=[(40, 10)], name="b.tif")
    job = tmp_path / "job.yaml"
    job.write_text(
        "inputs: ['*.tif']\noutput: out\n"
        "scan: {tile_px: 64, halo_px: 8, batch_size: 8, device: cpu, progress: false,"
        " weights: w.safetensors}\n"
    )
    runner = CliRunner()
    first = runner.invoke(cli, ["-q", "run", str(job), "--run-id", "first"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    out = tmp_path / "out"
    record = json.loads((out / "_runs" / "first.json").read_text())
    assert record["status"] == "ok" and record["tiles"]["total"] == 2 * 3 + 2 * 2 and record["tiles"]["resumed"] == 0
    report = json.loads((out / "a" / "report.json").read_text())
    assert report["statistics"]["pixels"] == 90 * 100 and [lv["factor"] for lv in report["overviews"]] == [2, 4]
    before = {s: zarr.open_group(str(out / s / "mask.zarr"), mode="r")["probability"][...] for s in ("a", "b")}
    assert not (out / LOCK_NAME).exists()

    second = runner.invoke(cli, ["-q", "run", str(job), "--run-id", "second"], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    record = json.loads((out / "_runs" / "second.json").read_text())
    assert record["tiles"]["resumed"] == record["tiles"]["total"] == 10
    for s, prob in before.items():
        np.testing.assert_array_equal(zarr.open_group(str(out / s / "mask.zarr"), mode="r")["probability"][...], prob)
    assert json.loads((out / "a" / "report.json").read_text())["statistics"] == report["statistics"]
