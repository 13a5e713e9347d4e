"""User mistakes in `irscan scan`, `plan` and `run` that used to pass silently, leave a partial
output or end in a traceback: each now gives one line and a non-zero exit, before any output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import ray
from click.testing import CliRunner

from pipeline.cli.main import cli
from pipeline.cli.options import config_from_options
from pipeline.config import ScanConfig
from pipeline.errors import InputError, JobSpecError, OutputExistsError
from pipeline.infer import InferenceSpec
from pipeline.jobspec import load_job
from pipeline.runner import run_scans
from pipeline.tiling import TilingSpec

from ..conftest import UTM_CRS, UTM_TRANSFORM


def _write(path: Path, data: np.ndarray) -> Path:
    with rasterio.open(path, "w", driver="GTiff", count=1, height=data.shape[0], width=data.shape[1],
                       dtype=data.dtype.name, crs=UTM_CRS, transform=UTM_TRANSFORM) as dataset:
        dataset.write(data, 1)
    return path


def _scene(target: tuple[int, int]) -> np.ndarray:
    data = np.random.default_rng(0).integers(1000, 1200, (128, 128)).astype(np.uint16)
    data[target[0] - 1 : target[0] + 2, target[1] - 1 : target[1] + 2] = 5000
    return data


def _one_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_resuming_an_output_whose_scene_file_was_replaced_is_refused(local_ray, random_weights, tmp_path):
    """A scene replaced by another of the same name and grid was 'resumed': every tile was on
    record, so the run ended ok with the old scene's mask and detections."""
    scene = _write(tmp_path / "latest.tif", _scene((30, 40)))
    config = ScanConfig(tiling=TilingSpec(64, 0), inference=InferenceSpec(weights_path=str(random_weights), device="cpu"))
    out = tmp_path / "out"
    first = run_scans([str(scene)], out, config, resume=True, overviews=False, statistics=False)
    assert first[0].tiles["done"] == 4
    # the same file again resumes: nothing to do
    again = run_scans([str(scene)], out, config, resume=True, overviews=False, statistics=False)
    assert again[0].tiles["resumed"] == 4
    report = (out / "latest" / "report.json").read_text()

    _write(scene, _scene((100, 90)))  # tonight's scene: same name, same grid, other pixels
    os.utime(scene, ns=(os.stat(scene).st_atime_ns, os.stat(scene).st_mtime_ns + 10**9))
    with pytest.raises(OutputExistsError) as info:
        run_scans([str(scene)], out, config, resume=True, overviews=False, statistics=False)
    message = str(info.value)
    assert message.startswith(f"{out / 'latest'}: output exists from another version of the scene {scene} (")
    assert "expected" in message and "got" in message and message.endswith("pass --overwrite")
    assert len(message.splitlines()) == 1
    assert (out / "latest" / "report.json").read_text() == report  # the old outputs are left alone

    # a scene of another grid under the same name: refused the same way, naming what differs
    with rasterio.open(scene, "w", driver="GTiff", count=1, height=100, width=100, dtype="uint16",
                       crs=UTM_CRS, transform=UTM_TRANSFORM) as dataset:
        dataset.write(np.ones((100, 100), np.uint16), 1)
    with pytest.raises(OutputExistsError, match=r"\(shape: expected \[128, 128\], got \[100, 100\]\)"):
        run_scans([str(scene)], out, config, resume=True, overviews=False, statistics=False)


def test_device_cuda_on_a_cluster_without_gpu_leaves_no_output(local_ray, random_weights, tmp_path):
    """The refusal came after each scene's mask.zarr was made; the next scan into the same
    folder then failed with 'output exists'."""
    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray cluster has a GPU")
    scene = _write(tmp_path / "s.tif", _scene((30, 40)))
    args = ["scan", str(scene), "--out", str(tmp_path / "out"), "--weights", str(random_weights),
            "--tile-px", "64", "--halo-px", "0"]
    line = _one_line(CliRunner().invoke(cli, [*args, "--device", "cuda"]))
    assert line.startswith("irscan: error: device: cuda but the Ray cluster has no GPU")
    assert not (tmp_path / "out" / "s").exists()
    result = CliRunner().invoke(cli, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "s" / "report.json").read_text()
    # --overwrite removed the old output before the device was checked: now it stays
    line = _one_line(CliRunner().invoke(cli, [*args, "--device", "cuda", "--overwrite"]))
    assert line.startswith("irscan: error: device: cuda but the Ray cluster has no GPU")
    assert (tmp_path / "out" / "s" / "report.json").read_text() == report


def test_norm_bounds_with_norm_none_are_refused(tmp_path):
    """--norm none ignored --norm-low/--norm-high: the scan ran with values as they are."""
    with pytest.raises(InputError, match=r"^norm_high: expected only with norm percentile or fixed .* got 3.0"):
        config_from_options({"norm_mode": "none", "norm_high": 3.0})
    assert config_from_options({"norm_mode": "none"}).normalization.mode == "none"
    scene = _write(tmp_path / "s.tif", _scene((30, 40)))
    line = _one_line(CliRunner().invoke(cli, ["scan", str(scene), "--out", str(tmp_path / "o"),
                                              "--norm", "none", "--norm-low", "5"]))
    assert line == ("irscan: error: norm_low: expected only with norm percentile or fixed (norm none takes the "
                    "values as they are), got 5.0 with norm none")
    assert not (tmp_path / "o").exists()
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [s.tif]\noutput: o\nscan: {norm_mode: none, norm_high: 3}\n")
    with pytest.raises(JobSpecError, match=r"job.yaml: scan.norm_high: norm_high: expected only with"):
        load_job(job)


@pytest.mark.parametrize("scan, needle", [
    ("scan:\n  tile-px: 128\n  tile_px: 256\n", "scan.tile_px: expected each option once, got it also as "
                                                "scan.tile-px (128 and 256)"),
    ("scan:\n  tile_px: 128\n  tile_px: 256\n", "not valid YAML at line 5, column 3: key 'tile_px' given twice "
                                                "(first at line 4)"),
    ("scan: {halo_px: 0, halo_px: 32}\n", "key 'halo_px' given twice"),
    ("output: other\n", "not valid YAML at line 3, column 1: key 'output' given twice (first at line 2)"),
])
def test_a_job_key_given_twice_is_refused(tmp_path, scan, needle):
    """YAML kept the last of two equal keys, and scan.tile-px / scan.tile_px were one option:
    one of the two values was dropped without a word."""
    _write(tmp_path / "s.tif", _scene((30, 40)))
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [s.tif]\noutput: o\n" + scan)
    result = CliRunner().invoke(cli, ["plan", str(job)])
    line = _one_line(result)
    assert needle in line and "job.yaml" in line


def test_a_merge_key_may_still_be_overridden(tmp_path):
    _write(tmp_path / "s.tif", _scene((30, 40)))
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [s.tif]\noutput: o\nscan:\n  <<: {tile_px: 256, halo_px: 32}\n  tile_px: 128\n")
    assert load_job(job).config.tiling == TilingSpec(128, 32)


def test_plan_refuses_an_output_under_a_file(tmp_path):
    """`irscan plan` passed a job whose output is a file, which `irscan run` then refuses."""
    _write(tmp_path / "s.tif", _scene((30, 40)))
    (tmp_path / "afile").write_text("x")
    job = tmp_path / "job.yaml"
    for output in ("afile", "afile/out"):
        job.write_text(f"inputs: [s.tif]\noutput: {output}\n")
        for args in (["plan", str(job)], ["plan", "--json", str(job)]):
            line = _one_line(CliRunner().invoke(cli, args))
            assert line == (f"irscan: error: {job}: output: expected a folder (or a place to make one), "
                            f"got a file at {tmp_path / 'afile'}")
    assert (tmp_path / "afile").read_text() == "x"


def test_run_log_dir_under_a_file_is_one_line(tmp_path):
    """`irscan run JOB --log-dir afile/logs` ended in a NotADirectoryError traceback, exit 1
    (the code for 'some tiles failed')."""
    _write(tmp_path / "s.tif", _scene((30, 40)))
    (tmp_path / "afile").write_text("x")
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [s.tif]\noutput: o\n")
    result = CliRunner().invoke(cli, ["run", str(job), "--run-id", "r1", "--log-dir", str(tmp_path / "afile" / "logs")])
    line = _one_line(result)
    assert line == f"irscan: error: log dir {tmp_path / 'afile' / 'logs'}: expected a folder to write r1.log into, " \
                   "got Not a directory"
    assert not (tmp_path / "o").exists()


def test_window_halo_without_window_is_refused(tmp_path):
    """--window-halo-px without --window-px (windows inside each tile) was ignored: the scan
    ran whole tiles, exit 0; likewise a job's scan.window_halo_px."""
    scene = _write(tmp_path / "s.tif", _scene((30, 40)))
    line = _one_line(CliRunner().invoke(cli, ["scan", str(scene), "--out", str(tmp_path / "o"),
                                              "--window-halo-px", "500"]))
    assert line == ("irscan: error: window_halo_px: expected only with window_px (it is the halo of the windows "
                    "inside each tile), got 500 without window_px")
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match=r"^window_halo_px: .* got 8 with window_px 0 \(whole tiles\)$"):
        config_from_options({"window_px": 0, "window_halo_px": 8})
    assert config_from_options({"window_px": 128, "window_halo_px": 24}).inference.window_halo_px == 24
    assert config_from_options({"window_px": 0}).inference.window_px is None
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [s.tif]\noutput: o\nscan: {window_halo_px: 500}\n")
    line = _one_line(CliRunner().invoke(cli, ["plan", str(job)]))
    assert line == (f"irscan: error: {job}: scan.window_halo_px: window_halo_px: expected only with window_px "
                    "(it is the halo of the windows inside each tile), got 500 without window_px")


@pytest.mark.parametrize("scan, needle", [
    ("weights: s.tif", "scan.weights: {dir}/s.tif: not a readable safetensors file ("),
    ("input_scale: 0.3", "scan.tile_px: tile_px: tiles are resized by input_scale 0.3; 512 px becomes 154 px, "
                         "expected a multiple of 64"),
    ("ray_address: nothing", "scan.ray_address: ray address: expected auto, HOST:PORT or ray://HOST:PORT, "
                             "got 'nothing'"),
])
def test_plan_makes_the_checks_run_makes_before_ray(tmp_path, monkeypatch, scan, needle):
    """`irscan plan` passed weights that are no MiM file, an input scale the network cannot take
    and a malformed Ray address, all of which `irscan run` refuses."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _write(tmp_path / "s.tif", _scene((30, 40)))
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: [s.tif]\noutput: o\nscan: {{{scan}}}\n")
    needle = needle.format(dir=tmp_path)
    for args in (["plan", str(job)], ["plan", "--json", str(job)]):
        line = _one_line(CliRunner().invoke(cli, args))
        assert line.startswith(f"irscan: error: {job}: {needle}"), line
    # irscan run refuses the same, before Ray, and names the same job key
    line = _one_line(CliRunner().invoke(cli, ["run", str(job), "--run-id", "r1"]))
    assert line.startswith(f"irscan: bad_input: {job}: {needle}"), line
    assert not (tmp_path / "o" / "s").exists()


def test_run_names_the_job_key_of_an_unreachable_ray_head(tmp_path):
    """`irscan run` printed a Ray head where nothing listens without the job's key
    (scan.ray_address), where plan names the key of every setting it refuses. In a process of
    its own, as a user runs it: a Ray this test module already joined would be kept instead."""
    import subprocess
    import sys

    _write(tmp_path / "s.tif", _scene((30, 40)))
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [s.tif]\noutput: o\nscan: {ray_address: '127.0.0.1:1'}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    assert CliRunner().invoke(cli, ["plan", str(job)], env={"RAY_ADDRESS": None}).exit_code == 0  # the form only
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "run", str(job), "--run-id", "r1"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]  # one line
    assert line.startswith(f"irscan: bad_input: {job}: scan.ray_address: ray address 127.0.0.1:1: "
                           "expected a running Ray head there, got "), line
    assert not (tmp_path / "o" / "s").exists()


def test_a_setting_error_keeps_its_key_across_processes():
    """Ray pickles an error raised in a worker; the job key must come back with it."""
    import pickle

    from pipeline.errors import NormalizationError, SettingError

    for err, key in ((SettingError("device: cuda was asked for", "device"), "device"),
                     (NormalizationError("s.tif: norm none: expected a float scene"), "norm_mode")):
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), back.key, str(back)) == (type(err), key, str(err))


def test_plan_checks_the_ray_address_without_contacting_it(tmp_path, monkeypatch):
    """Plan checks only the form: a well-formed address where nothing listens passes plan
    (run would refuse it after trying to connect)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _write(tmp_path / "s.tif", _scene((30, 40)))
    job = tmp_path / "job.yaml"
    for address in ("127.0.0.1:1", "ray://[::1]:10001", "auto"):
        job.write_text(f"inputs: [s.tif]\noutput: o\nscan: {{ray_address: '{address}'}}\n")
        result = CliRunner().invoke(cli, ["plan", str(job)])
        assert result.exit_code == 0, result.output
    assert not (tmp_path / "o").exists()


def test_plan_counts_no_finished_tiles_of_an_output_run_would_refuse(local_ray, random_weights, tmp_path):
    """plan counted the tiles of an output made with another configuration, or from another
    version of the scene file, as finished; run refuses to continue such an output."""
    from pipeline.jobspec import plan_job

    scene = _write(tmp_path / "s.tif", _scene((30, 40)))
    job = tmp_path / "job.yaml"
    base = f"inputs: [s.tif]\noutput: out\nscan: {{tile_px: 64, halo_px: 0, device: cpu, weights: {random_weights}"
    job.write_text(base + "}\n")
    config = load_job(job).config
    run_scans([str(scene)], tmp_path / "out", config, resume=True, overviews=False, statistics=False)
    (work,) = plan_job(load_job(job)).scenes
    assert (work.tiles_total, work.tiles_finished) == (4, 4)
    assert getattr(work, "run_refuses", None) is None

    job.write_text(base + ", threshold: 0.7}\n")  # another configuration
    other = load_job(job)
    with pytest.raises(OutputExistsError) as refused:
        run_scans([str(scene)], tmp_path / "out", other.config, resume=True, overviews=False, statistics=False)
    assert "output exists from another configuration" in str(refused.value)
    (work,) = plan_job(other).scenes
    assert (work.tiles_finished, work.tiles_todo) == (0, 4)
    assert work.run_refuses == str(refused.value)
    result = CliRunner().invoke(cli, ["plan", str(job)])
    assert result.exit_code == 0, result.output
    assert f"s: 0 finished: irscan run refuses its existing output without --overwrite: {refused.value}" \
        in result.output.splitlines()
    data = json.loads(CliRunner().invoke(cli, ["plan", "--json", str(job)]).output)
    assert data["scenes"][0]["run_refuses"] == str(refused.value)
    assert data["totals"]["tiles_finished"] == 0
    assert plan_job(other.with_overwrite(True)).scenes[0].run_refuses is None

    job.write_text(base + "}\n")  # the same configuration, another version of the scene file
    _write(scene, _scene((100, 90)))
    os.utime(scene, ns=(os.stat(scene).st_atime_ns, os.stat(scene).st_mtime_ns + 10**9))
    with pytest.raises(OutputExistsError) as refused:
        run_scans([str(scene)], tmp_path / "out", config, resume=True, overviews=False, statistics=False)
    (work,) = plan_job(load_job(job)).scenes
    assert work.tiles_finished == 0
    assert work.run_refuses == str(refused.value) and "another version of the scene" in work.run_refuses


def test_plan_counts_no_finished_tiles_of_a_folder_run_starts_over(local_ray, random_weights, tmp_path):
    """A scene folder with a tile ledger but no mask store or fingerprint (one made by hand, or
    whose store was deleted) is started over by run; plan counted its ledger as finished."""
    import shutil

    from pipeline.jobspec import plan_job

    scene = _write(tmp_path / "s.tif", _scene((30, 40)))
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: [s.tif]\noutput: out\nscan: {{tile_px: 64, halo_px: 0, device: cpu, "
                   f"weights: {random_weights}}}\n")
    config = load_job(job).config
    run_scans([str(scene)], tmp_path / "out", config, resume=True, overviews=False, statistics=False)
    shutil.rmtree(tmp_path / "out" / "s" / "mask.zarr")
    assert (tmp_path / "out" / "s" / "_irscan" / "tiles.jsonl").is_file()  # the ledger is left
    (work,) = plan_job(load_job(job)).scenes
    assert (work.tiles_total, work.tiles_finished, work.run_refuses) == (4, 0, None)
    (result,) = run_scans([str(scene)], tmp_path / "out", config, resume=True, overviews=False, statistics=False)
    assert (result.tiles["resumed"], result.tiles["done"]) == (0, 4)  # as plan said: all four to do


def test_norm_none_on_an_integer_scene_is_refused(tmp_path):
    """--norm none takes values as they are (a float scene in 0..1): on a uint16 scene every
    pixel became 1, so the scan found nothing and said nothing."""
    from pipeline.normalize import NormalizationSpec, apply, stats_from_sample

    data = _scene((30, 40))
    scene = _write(tmp_path / "s.tif", data)
    assert np.all(apply(data, stats_from_sample(data, None, NormalizationSpec(mode="none"))) == 1.0)  # why
    expected = (f"{scene}: norm none: expected a float scene with values in 0..1, got dtype uint16 (every value "
                "above 0 would become 1); use norm percentile or fixed")
    line = _one_line(CliRunner().invoke(cli, ["scan", str(scene), "--out", str(tmp_path / "o"), "--norm", "none"]))
    assert line == f"irscan: error: {expected}"
    assert not (tmp_path / "o" / "s").exists()
    job = tmp_path / "job.yaml"
    job.write_text("inputs: [s.tif]\noutput: o\nscan: {norm_mode: none}\n")
    line = _one_line(CliRunner().invoke(cli, ["plan", str(job)]))
    assert line == f"irscan: error: {job}: scan.norm_mode: {expected}"
    line = _one_line(CliRunner().invoke(cli, ["run", str(job), "--run-id", "r1"]))
    assert line == f"irscan: bad_input: {job}: scan.norm_mode: {expected}"  # the key, as plan names it
    assert not (tmp_path / "o" / "s").exists()
    # a float scene already in 0..1 is what norm none is for
    _write(tmp_path / "s.tif", (data / 5000).astype(np.float32))
    result = CliRunner().invoke(cli, ["plan", str(job)])
    assert result.exit_code == 0, result.output
    assert "float32" in result.output


def test_infinite_float_pixels_are_nodata_as_documented(tmp_path):
    """+inf/-inf in a float band are nodata, like NaN; the README and the docstrings said NaN only."""
    from pipeline.normalize import NormalizationSpec, stats_from_sample
    from pipeline.scene import open_scene, read_decimated, read_window
    from pipeline.tiling import Window

    data = (_scene((30, 40)) / 5000).astype(np.float32)
    data[5, 6], data[7, 8], data[9, 10] = np.inf, -np.inf, np.nan
    info = open_scene(str(_write(tmp_path / "f.tif", data)))
    tile = read_window(info, Window(0, 0, 16, 16))
    assert not tile.valid[5, 6] and not tile.valid[7, 8] and not tile.valid[9, 10]
    assert tile.valid.sum() == 16 * 16 - 3 and np.isnan(tile.pixels[[5, 7, 9], [6, 8, 10]]).all()
    sample = read_decimated(info, 2048)
    stats = stats_from_sample(sample.pixels, sample.valid, NormalizationSpec(low_pct=0.0, high_pct=100.0))
    assert stats.n_samples == 128 * 128 - 3 and stats.high == pytest.approx(1.0) and np.isfinite(stats.low)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    step3 = readme[readme.index("3. Ray CPU tasks read tiles"):readme.index("4. An actor pool")]
    assert "NaN" in step3 and "+inf" in step3 and "-inf" in step3
