"""``irscan plan`` / ``irscan run`` and the jobs/ entry points: examples plan, exit codes, records."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from click.testing import CliRunner

from pipeline.cli.main import cli
from pipeline.jobrun import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_FAILED_TILES,
    EXIT_LOCKED,
    EXIT_OK,
    RUNS_DIR,
)
from pipeline.lock import LOCK_NAME

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "jobs" / "examples").glob("*.yaml"))
SAMPLE_DIR = REPO / "data" / "sample"


def _write_tif(path: Path, shape: tuple[int, int] = (700, 900)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (1000 + np.random.default_rng(0).normal(0, 20, shape)).astype("uint16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", height=shape[0], width=shape[1], count=1,
                           dtype="uint16", crs="EPSG:32618",
                           transform=Affine(20.0, 0.0, 435720.0, 0.0, -20.0, 4179460.0)) as ds:
            ds.write(data, 1)


def _sample_names() -> set[str]:
    """The data/sample files that the examples reference (STAC hrefs), plus one for the globs."""
    names = {"sample_scene.tif"}
    for stac in (REPO / "jobs" / "examples").glob("*.json"):
        for item in json.loads(stac.read_text())["features"]:
            for asset in item["assets"].values():
                href = asset["href"]
                if "data/sample/" in href and "://" not in href:
                    names.add(href.rsplit("/", 1)[1])
    return names


@pytest.fixture(scope="module")
def examples_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of jobs/examples with generated scenes at ../../data/sample, as in a clone."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(REPO / "jobs" / "examples", root / "jobs" / "examples")
    for name in _sample_names():
        _write_tif(root / "data" / "sample" / name)
    return root


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result: Any, *needles: str) -> str:
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert len(names) >= 3 and {"glob_geotiffs.yaml", "stac_items.yaml", "gpu_cluster.yaml"} <= names
    gpu = yaml.safe_load((REPO / "jobs" / "examples" / "gpu_cluster.yaml").read_text())
    assert 0 < gpu["scan"]["gpus_per_actor"] < 1


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_plan_every_example(examples_tree: Path, example: Path) -> None:
    job = examples_tree / "jobs" / "examples" / example.name
    result = run_cli("plan", str(job))
    assert result.exit_code == 0, result.output
    assert "sample_scene" in result.stdout and "EPSG:32618" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("total")
    data = json.loads(run_cli("plan", str(job), "--json").stdout)
    assert data["totals"]["scenes"] >= 1 and data["totals"]["tiles_todo"] == data["totals"]["tiles_total"] > 0
    assert data["lock"] is None


@pytest.mark.skipif(not list(SAMPLE_DIR.glob("*.tif")), reason="data/sample/ is not committed yet")
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_plan_every_example_in_the_repository(example: Path) -> None:
    result = run_cli("plan", str(example))
    assert result.exit_code == 0, result.output


def test_plan_shows_lock_and_bad_job_is_one_line(tmp_path: Path) -> None:
    _write_tif(tmp_path / "s.tif", (50, 60))
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [s.tif]\noutput: out\nscan: {tile_px: 64, halo_px: 8}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({
        "host": "h1", "pid": 42, "run_id": "r1", "started": "2026-01-01T00:00:00Z"}))
    result = run_cli("plan", str(job))
    assert result.exit_code == 0 and "locked by a running job: host h1, pid 42, run id r1" in result.stdout

    job.write_text("inputs: [s.tif]\noutput: out\nscan: {tile_px: 100}\n")
    line = one_line_error(run_cli("plan", str(job)), "irscan: error: ", "scan.tile_px", "multiple of 64")
    assert str(job) in line
    one_line_error(run_cli("plan", str(tmp_path / "missing.yaml")), "job file not found")
    one_line_error(run_cli("run", str(tmp_path / "missing.yaml")), "bad_input", "job file not found")
    one_line_error(run_cli("run", str(job), "--run-id", "../x"), "run id")


# ------------------------------------------------------------------ run without Ray
class _Result:
    def __init__(self, scene: str, out: Path, failed: list[str]) -> None:
        self.scene, self.out_dir, self.detections = scene, out / scene, 2
        self.tiles = {"total": 4, "done": 4 - len(failed), "skipped": 0, "failed": len(failed), "resumed": 1}
        self.failed_tiles = [{"tile": t, "error": "boom"} for t in failed]
        self.report = {"mpx": 0.5}


@pytest.fixture
def small_job(tmp_path: Path) -> Path:
    _write_tif(tmp_path / "a.tif", (50, 60))
    _write_tif(tmp_path / "b.tif", (50, 60))
    job = tmp_path / "job.yaml"
    job.write_text("inputs: ['*.tif']\noutput: out\npostprocess: {overviews: false, statistics: false}\n")
    return job


@pytest.mark.parametrize(
    ("behaviour", "code", "needle"),
    [
        ("ok", EXIT_OK, "2 scene(s)"),
        ("failed", EXIT_FAILED_TILES, "1 tile(s) failed: b/r0_c1"),
        ("input", EXIT_BAD_INPUT, "scene is bad"),
        ("crash", EXIT_ERROR, "unexpected error: ZeroDivisionError"),
    ],
)
def test_run_exit_codes_and_record(small_job: Path, monkeypatch: pytest.MonkeyPatch, behaviour: str,
                                   code: int, needle: str) -> None:
    import pipeline.runner
    from pipeline.errors import SceneError

    calls: list[dict[str, Any]] = []

    def fake_run_scans(paths: list[str], out: str, config: Any, *, resume: bool = False, **kwargs: Any) -> list[_Result]:
        calls.append({"paths": paths, "out": out, "resume": resume, "overwrite": config.overwrite})
        assert (Path(out) / LOCK_NAME).exists()  # the lock is held while the scan runs
        if behaviour == "input":
            raise SceneError("scene is bad")
        if behaviour == "crash":
            raise ZeroDivisionError("x")
        return [_Result("a", Path(out), []), _Result("b", Path(out), ["r0_c1"] if behaviour == "failed" else [])]

    monkeypatch.setattr(pipeline.runner, "run_scans", fake_run_scans)
    result = run_cli("run", str(small_job), "--run-id", "test-1", "--log-dir", str(small_job.parent / "logs"))
    assert result.exit_code == code, result.output
    assert needle in result.output
    out = small_job.parent / "out"
    assert calls == [{"paths": [str(small_job.parent / "a.tif"), str(small_job.parent / "b.tif")],
                      "out": str(out), "resume": True, "overwrite": False}]
    record = json.loads((out / RUNS_DIR / "test-1.json").read_text())
    assert record["exit_code"] == code and record["run_id"] == "test-1" and record["started"] <= record["ended"]
    assert not (out / LOCK_NAME).exists()
    assert (small_job.parent / "logs" / "test-1.log").exists()
    if behaviour == "failed":
        assert record["failed_tiles"] == ["b/r0_c1: boom"] and record["tiles"]["failed"] == 1
        assert "failed b/r0_c1: boom" in result.stderr
    if behaviour == "ok":
        assert record["tiles"] == {"total": 8, "done": 8, "skipped": 0, "failed": 0, "resumed": 2}
        assert [s["scene"] for s in record["scenes"]] == ["a", "b"]
        # --overwrite: no resume, config.overwrite set
        assert run_cli("run", str(small_job), "--overwrite").exit_code == 0
        assert calls[-1]["resume"] is False and calls[-1]["overwrite"] is True


def test_run_with_a_file_where_the_output_folder_goes_is_one_line_bad_input(tmp_path: Path) -> None:
    _write_tif(tmp_path / "a.tif", (50, 60))
    (tmp_path / "afile").write_text("x")
    job = tmp_path / "job.yaml"
    job.write_text("inputs: ['*.tif']\noutput: afile/out\n")
    result = run_cli("run", str(job), "--run-id", "t-file")
    assert result.exit_code == EXIT_BAD_INPUT
    line = one_line_error(result, f"{job}: output {tmp_path / 'afile' / 'out'}: expected a folder",
                          f"got a file at {tmp_path / 'afile'}")
    assert line.startswith("irscan: bad_input: ")
    assert (tmp_path / "afile").read_text() == "x"


# ------------------------------------------------------------------ jobs/ entry points
def test_cron_exit_code_for_bad_job_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [x.tif]\noutput: out\nscna: {tile_px: 512}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cron", str(bad), "--log-dir", str(tmp_path / "logs"), "--run-id", "c1"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("irscan cron c1: bad_input: ") and "scna: unknown key" in lines[0]
    assert "Traceback" not in proc.stderr
    assert "bad_input" not in proc.stderr
    log_text = (tmp_path / "logs" / "c1.log").read_text()
    assert "cron run c1" in log_text and "exit 2" in log_text
    # argument errors are bad input too
    proc = subprocess.run([sys.executable, "-m", "jobs.cron", str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == EXIT_BAD_INPUT and "--log-dir" in proc.stderr


def test_cron_and_submit_entry_exit_3_when_locked(small_job: Path, tmp_path: Path) -> None:
    from jobs import cron, submit_entry

    out = small_job.parent / "out"
    holder = subprocess.Popen([sys.executable, "-m", "tests.jobs._lock_holder", str(out), "nightly-1"],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code = cron.main([str(small_job), "--log-dir", str(tmp_path / "logs"), "--run-id", "c2"])
        assert code == EXIT_LOCKED
        assert submit_entry.main([str(small_job), "--run-id", "s2"]) == EXIT_LOCKED
        record = json.loads((out / RUNS_DIR / "c2.json").read_text())
        assert record["status"] == "locked" and "nightly-1" in record["message"]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_submit_entry_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import submit_entry

    assert submit_entry.main([str(tmp_path / "none.yaml")]) == EXIT_BAD_INPUT
    assert "bad_input" in capsys.readouterr().out
    assert submit_entry.main([str(tmp_path / "none.yaml"), "--run-id", "a b"]) == EXIT_BAD_INPUT
