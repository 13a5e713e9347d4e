"""pipeline.jobspec: job file validation (one-line errors naming the key), inputs, plan."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli.options import SCAN_OPTION_NAMES
from pipeline.errors import JobSpecError, SceneError
from pipeline.jobspec import StacInput, expand_inputs, gdal_path, load_job, plan_job
from pipeline.ledger import TileLedger


def write_job(folder: Path, data: Any, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def scenes(make_scene, tmp_path: Path) -> Path:
    """tmp_path/scenes/{a,b}.tif (300x257 and 100x90 uint16) and a non-matching c.png."""
    (tmp_path / "scenes").mkdir()
    make_scene(name="scenes/a.tif")
    make_scene(shape=(100, 90), name="scenes/b.tif")
    (tmp_path / "scenes" / "c.png").write_bytes(b"not a scene")
    return tmp_path / "scenes"


def base_job(**over: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"inputs": ["scenes/*.tif"], "output": "out"}
    job.update(over)
    return job


# ------------------------------------------------------------------ valid jobs
def test_load_resolves_relative_to_job_file(tmp_path: Path, scenes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    path = write_job(tmp_path, base_job(scan={"tile_px": 128, "halo-px": 16, "gpus_per_actor": 1,
                                              "norm_low": 1, "weights": "w.safetensors",
                                              "no_amp": True, "progress": None}))
    monkeypatch.chdir("/")  # the working directory does not matter
    spec = load_job(path)
    assert spec.name == "job"
    assert spec.output == str(tmp_path / "out")
    assert spec.inputs == (str(scenes / "*.tif"),)
    cfg = spec.config
    assert (cfg.tiling.tile_px, cfg.tiling.halo_px) == (128, 16)
    assert cfg.ray.gpus_per_actor == 1.0 and cfg.normalization.low_pct == 1.0
    assert cfg.inference.weights_path == str(weights) and cfg.inference.amp is False
    assert expand_inputs(spec) == [str(scenes / "a.tif"), str(scenes / "b.tif")]
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.overviews and spec.statistics


def test_every_scan_option_is_accepted(tmp_path: Path, scenes: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    scan = {
        "tile_px": 256, "halo_px": 32, "batch_size": 4, "band": 1, "norm_mode": "fixed",
        "norm_low": 0, "norm_high": 5000.5, "device": "cpu", "gpus_per_actor": 0.25,
        "num_actors": 3, "weights": str(weights), "threshold": 0.4, "no_amp": False, "tta_flips": True, "input_scale": 3,
        "window_px": 128, "window_halo_px": 24, "ray_address": "auto", "max_tiles_in_flight": 64, "overwrite": True, "progress": False,
    }
    assert set(scan) == set(SCAN_OPTION_NAMES)
    spec = load_job(write_job(tmp_path, base_job(name="all-options", scan=scan)))
    assert spec.name == "all-options" and spec.scan_options == {**scan, "norm_low": 0.0, "input_scale": 3.0}
    c = spec.config
    assert c.normalization.mode == "fixed" and c.normalization.max_value == 5000.5
    assert c.ray.num_actors == 3 and c.ray.address == "auto" and c.ray.max_tiles_in_flight == 64
    assert c.inference.threshold == 0.4 and c.overwrite is True and c.progress is False
    assert c.inference.flip_tta is True and c.inference.input_scale == 3.0
    assert (c.inference.window_px, c.inference.window_halo_px) == (128, 24)
    assert spec.with_overwrite(False).config.overwrite is False


@pytest.mark.parametrize(
    ("job", "needles"),
    [
        ("inputs: [a.tif\n", ["not valid YAML", "line"]),
        ("- a\n- b\n", ["(top level)", "expected a mapping", "got ['a', 'b']"]),
        ({"output": "out"}, ["inputs: required key is missing"]),
        ({"inputs": ["scenes/*.tif"]}, ["output: required key is missing"]),
        (base_job(outptu="x"), ["outptu: unknown key", "inputs, output"]),
        (base_job(inputs="scenes/*.tif"), ["inputs: expected a non-empty list", "(str)"]),
        (base_job(inputs=[]), ["inputs: expected a non-empty list", "got []"]),
        (base_job(inputs=[3]), ["inputs[0]: expected a path/glob string", "got 3 (int)"]),
        (base_job(inputs=["nothing/*.tif"]), ["inputs[0]: glob", "nothing/*.tif matches no file"]),
        (base_job(inputs=["scenes/a.tif", "missing.tif"]), ["inputs[1]: file", "missing.tif does not exist"]),
        (base_job(inputs=[{"stac": "x.json"}]), ["inputs[0].asset: required key is missing"]),
        (base_job(inputs=[{"stac": "x.json", "asset": "B1", "extra": 1}]), ["inputs[0].extra: unknown key"]),
        (base_job(inputs=[{"stac": "x.json", "asset": 5}]), ["inputs[0].asset: expected a non-empty string", "got 5 (int)"]),
        (base_job(inputs=[{"stac": "missing.json", "asset": "B1"}]), ["inputs[0].stac: file", "missing.json does not exist"]),
        (base_job(output=["a"]), ["output: expected a folder path", "(list)"]),
        (base_job(output="s3://bucket/out"), ["output: expected a local or mounted folder"]),
        (base_job(name="my job"), ["name: expected a string of letters", "'my job'"]),
        (base_job(scan=[1]), ["scan: expected a mapping of scan options", "(list)"]),
        (base_job(scan={"tile": 512}), ["scan.tile: unknown scan option", "tile_px"]),
        (base_job(scan={"tile_px": "512"}), ["scan.tile_px: expected an integer", "got '512' (str)"]),
        (base_job(scan={"tile_px": 512.0}), ["scan.tile_px: expected an integer", "got 512.0 (float)"]),
        (base_job(scan={"tile_px": True}), ["scan.tile_px: expected an integer", "(bool)"]),
        (base_job(scan={"tile_px": None}), ["scan.tile_px: expected an integer", "got None (null)"]),
        (base_job(scan={"tile_px": 100}), ["scan.tile_px:", "multiple of 64", "got 100"]),
        (base_job(scan={"tile_px": 128, "halo_px": 64}), ["scan.halo_px:", "core_px", "must be > 0"]),
        (base_job(scan={"halo_px": -1}), ["scan.halo_px:", ">= 0, got -1"]),
        (base_job(scan={"batch_size": 0}), ["scan.batch_size:", "got 0"]),
        (base_job(scan={"band": 0}), ["scan.band:", "got 0"]),
        (base_job(scan={"norm_mode": "minmax"}), ["scan.norm_mode: expected one of percentile, fixed, none", "'minmax'"]),
        (base_job(scan={"norm_mode": "fixed"}), ["scan.norm_low: norm_mode fixed needs norm_low and norm_high", "norm_low=None"]),
        (base_job(scan={"norm_mode": "fixed", "norm_low": 5}), ["scan.norm_high: norm_mode fixed needs", "norm_high=None"]),
        (base_job(scan={"norm_mode": "fixed", "norm_low": 5, "norm_high": 5}), ["scan.norm_low:", "min_value < max_value"]),
        (base_job(scan={"norm_low": 99, "norm_high": 1}), ["scan.norm_low:", "low_pct < high_pct"]),
        (base_job(scan={"norm_high": float("nan")}), ["scan.norm_high: expected a number or null", "nan"]),
        (base_job(scan={"device": "gpu"}), ["scan.device: expected one of auto, cpu, cuda", "'gpu'"]),
        (base_job(scan={"gpus_per_actor": 0}), ["scan.gpus_per_actor:", "(0, 8]", "got 0.0"]),
        (base_job(scan={"gpus_per_actor": "half"}), ["scan.gpus_per_actor: expected a number", "'half' (str)"]),
        (base_job(scan={"num_actors": 0}), ["scan.num_actors:", ">= 1, got 0"]),
        (base_job(scan={"threshold": 1.5}), ["scan.threshold:", "(0, 1)", "1.5"]),
        (base_job(scan={"weights": "nope.safetensors"}), ["scan.weights:", "nope.safetensors does not exist"]),
        (base_job(scan={"no_amp": "yes"}), ["scan.no_amp: expected true or false", "'yes' (str)"]),
        (base_job(scan={"no_amp": 1}), ["scan.no_amp: expected true or false", "got 1 (int)"]),
        (base_job(scan={"window_px": 64.5}), ["scan.window_px: expected an integer (0: whole tiles)", "64.5 (float)"]),
        (base_job(scan={"window_px": 1024}), ["scan.window_px:", "expected at most tile_px (512), got 1024"]),
        (base_job(scan={"window_px": 256, "window_halo_px": 96}), ["scan.window_halo_px:", "expected at most halo_px (64), got 96"]),
        (base_job(scan={"max_tiles_in_flight": 0}), ["scan.max_tiles_in_flight:", "got 0"]),
        (base_job(scan={"overwrite": None}), ["scan.overwrite: expected true or false", "None (null)"]),
        (base_job(postprocess={"overview": True}), ["postprocess.overview: unknown key", "overviews, statistics"]),
        (base_job(postprocess={"overviews": "no"}), ["postprocess.overviews: expected true or false"]),
    ],
)
def test_validation_errors_name_the_key(tmp_path: Path, scenes: Path, job: Any, needles: list[str]) -> None:
    path = write_job(tmp_path, job)
    with pytest.raises(JobSpecError) as exc:
        load_job(path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    for needle in needles:
        assert needle in message, message


def test_missing_job_file_and_unsafe_yaml(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")
    # python tags are not constructed (safe_load): no code runs from a job file
    marker = tmp_path / "pwned"
    path = write_job(tmp_path, f"inputs: !!python/object/apply:os.system ['touch {marker}']\noutput: o\n")
    with pytest.raises(JobSpecError, match="not valid YAML"):
        load_job(path)
    assert not marker.exists()


# ------------------------------------------------------------------ inputs
def test_globs_recursive_dedup_sorted(tmp_path: Path, make_scene) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    make_scene(shape=(20, 20), name="d/z.tif")
    make_scene(shape=(20, 20), name="d/sub/y.tif")
    (tmp_path / "d" / "dir.tif").mkdir()  # a folder that matches is not a scene
    spec = load_job(write_job(tmp_path, {
        "inputs": ["d/**/*.tif", "d/z.tif", str(tmp_path / "d" / "z.tif"), "./d/../d/z.tif"],
        "output": "o",
    }))
    assert expand_inputs(spec) == [str(tmp_path / "d" / "sub" / "y.tif"), str(tmp_path / "d" / "z.tif")]


def test_url_inputs_become_gdal_paths(tmp_path: Path) -> None:
    spec = load_job(write_job(tmp_path, {
        "inputs": ["https://example.com/a/cog.tif", "s3://bucket/key/b.tif", "/vsizip/x.zip/c.tif"],
        "output": "o",
    }))
    assert expand_inputs(spec) == [
        "/vsicurl/https://example.com/a/cog.tif",
        "/vsis3/bucket/key/b.tif",
        "/vsizip/x.zip/c.tif",
    ]
    assert gdal_path("gs://b/k.tif") == "/vsigs/b/k.tif"
    assert gdal_path("file:///data/x.tif") == "/data/x.tif"
    assert gdal_path("relative/x.tif") == "relative/x.tif"


def stac_collection(*hrefs: str, asset: str = "lwir") -> dict[str, Any]:
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": f"item-{i}", "assets": {asset: {"href": h}, "thumb": {"href": "t.png"}}}
            for i, h in enumerate(hrefs)
        ],
    }


def test_stac_relative_absolute_and_url_hrefs(tmp_path: Path, make_scene) -> None:
    (tmp_path / "stac" / "data").mkdir(parents=True)
    rel = make_scene(shape=(30, 30), name="stac/data/rel.tif")
    absolute = make_scene(shape=(30, 30), name="abs.tif")
    doc = stac_collection("data/rel.tif", str(absolute), "https://example.com/c.tif", "s3://b/d.tif",
                          "file://" + str(absolute))
    (tmp_path / "stac" / "items.json").write_text(json.dumps(doc))
    spec = load_job(write_job(tmp_path, {"inputs": [{"stac": "stac/items.json", "asset": "lwir"}], "output": "o"}))
    assert spec.inputs == (StacInput(str(tmp_path / "stac" / "items.json"), "lwir"),)
    assert expand_inputs(spec) == sorted([
        "/vsicurl/https://example.com/c.tif", "/vsis3/b/d.tif", str(absolute), str(rel),
    ])


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        ("{not json", ["inputs[0].stac:", "not readable JSON"]),
        ({"type": "Feature", "assets": {}}, ["inputs[0].stac:", "expected a STAC ItemCollection", "got type 'Feature'"]),
        ([1, 2], ["expected a STAC ItemCollection", "got type 'list'"]),
        ({"type": "FeatureCollection", "features": []}, ["inputs[0].stac:", "has no items"]),
        ({"type": "FeatureCollection", "features": [{"id": "x"}]}, ["item 'x' (features[0])", "has no assets mapping"]),
        (stac_collection("a.tif", asset="B10"), ["inputs[0].asset: item 'item-0' (features[0])", "no asset 'lwir'", "it has: B10, thumb"]),
        ({"type": "FeatureCollection", "features": [{"id": "y", "assets": {"lwir": {"type": "image/tiff"}}}]},
         ["inputs[0].asset: item 'y'", "asset 'lwir' has no href"]),
        (stac_collection("gone.tif"), ["inputs[0].asset: item 'item-0'", "href 'gone.tif'", "does not exist"]),
    ],
)
def test_stac_errors(tmp_path: Path, doc: Any, needles: list[str]) -> None:
    stac = tmp_path / "items.json"
    stac.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    path = write_job(tmp_path, {"inputs": [{"stac": "items.json", "asset": "lwir"}], "output": "o"})
    with pytest.raises(JobSpecError) as exc:
        load_job(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message, message


# ------------------------------------------------------------------ plan
def _interrupted_output(spec: Any, stem: str) -> None:
    """The store and fingerprint ``irscan run`` makes for the scene ``stem`` before its first tile."""
    from mim_model.weights import weights_sha256
    from pipeline.infer import resolve_weights_path
    from pipeline.ledger import STATE_DIR
    from pipeline.scene import open_scene
    from pipeline.write_zarr import MASK_ZARR, create_mask_store

    (path,) = [p for p in expand_inputs(spec) if Path(p).stem == stem]
    scene_dir = Path(spec.output) / stem
    create_mask_store(scene_dir / MASK_ZARR, open_scene(path).grid, spec.config.tiling, scene_name=stem)
    fingerprint = spec.config.output_fingerprint(weights_sha256(resolve_weights_path(spec.config.inference)))
    (scene_dir / STATE_DIR).mkdir(exist_ok=True)
    (scene_dir / STATE_DIR / "fingerprint.json").write_text(json.dumps({"fingerprint": fingerprint}))


def test_plan_counts_tiles_and_finished(tmp_path: Path, scenes: Path) -> None:
    spec = load_job(write_job(tmp_path, base_job(scan={"tile_px": 128, "halo_px": 16})))  # core 96
    plan = plan_job(spec)
    a, b = plan.scenes
    assert (a.name, a.height_px, a.width_px, a.dtype, a.crs) == ("a", 300, 257, "uint16", "EPSG:32618")
    assert a.tiles_total == 4 * 3 and b.tiles_total == 2 * 1
    assert plan.tiles_finished == 0 and plan.tiles_todo == 14
    assert plan.mpx == pytest.approx((300 * 257 + 100 * 90) / 1e6)

    # an interrupted run left its store, fingerprint and ledger: done/skipped count, failed and
    # foreign ids do not (a ledger alone is no output run continues: counted 0, in test_input_mistakes)
    _interrupted_output(spec, "a")
    TileLedger(Path(spec.output) / "a").append([
        {"tile": "r0_c0", "status": "done"}, {"tile": "r0_c1", "status": "skipped"},
        {"tile": "r1_c1", "status": "failed"}, {"tile": "r9_c9", "status": "done"},
        {"tile": "bogus", "status": "done"},
    ])
    plan = plan_job(spec)
    assert [s.tiles_finished for s in plan.scenes] == [2, 0]
    assert plan.scenes[0].tiles_todo == 10 and plan.tiles_todo == 12
    data = plan.to_dict()
    assert data["totals"] == {"scenes": 2, "tiles_total": 14, "tiles_finished": 2, "tiles_todo": 12,
                              "mpx": round(plan.mpx, 3)}
    assert data["core_px"] == 96 and data["scenes"][0]["tiles_todo"] == 10
    json.dumps(data)
    # overwrite redoes everything
    assert plan_job(spec.with_overwrite(True)).tiles_finished == 0


def test_plan_refuses_duplicate_stems_and_bad_scenes(tmp_path: Path, make_scene) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    make_scene(shape=(20, 20), name="x/s.tif")
    make_scene(shape=(20, 20), name="y/s.tif")
    spec = load_job(write_job(tmp_path, {"inputs": ["*/s.tif"], "output": "o"}))
    with pytest.raises(JobSpecError, match="share the file stem 's'"):
        plan_job(spec)
    (tmp_path / "bad.tif").write_bytes(b"no raster")
    spec = load_job(write_job(tmp_path, {"inputs": ["bad.tif"], "output": "o"}))
    with pytest.raises(SceneError, match="bad.tif"):
        plan_job(spec)
    spec = load_job(write_job(tmp_path, {"inputs": ["x/s.tif"], "output": "o", "scan": {"band": 2}}))
    with pytest.raises(SceneError, match="band 2 does not exist"):
        plan_job(spec)
    assert not os.path.exists(tmp_path / "o")  # planning writes nothing
