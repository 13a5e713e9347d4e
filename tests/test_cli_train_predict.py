"""``irscan train / evaluate / predict`` through click's CliRunner: outputs and one-line errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline.cli.main import cli

SIRST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sirst"
needs_sirst = pytest.mark.skipif(not (SIRST / "images").is_dir(), reason="SIRST data not found at ../shared/data/sirst")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained spatial-layout MiM saved as `irscan train --export` saves (threshold 0.5, input scale 2)."""
    import torch

    from mim_model import MiM
    from mim_model.weights import save_safetensors

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "mim.safetensors"
    save_safetensors(MiM(layout="spatial"), path, metadata={"threshold": "0.5", "input_scale": "2.0"})
    return path


def one_line_error(result, *needles: str) -> None:  # noqa: ANN001
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("irscan: error: ")
    for needle in needles:
        assert needle in lines[0]


def write_data(root: Path, ids: list[str], split: str = "test") -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    (root / "idx_427").mkdir(exist_ok=True)
    for image_id in ids:
        for sub, name in (("images", f"{image_id}.png"), ("masks", f"{image_id}_pixels0.png")):
            (root / sub / name).write_bytes((SIRST / sub / name).read_bytes())
    (root / "idx_427" / f"{split}.txt").write_text("\n".join(ids))
    return root


@needs_sirst
def test_predict_writes_masks_of_input_size(tmp_path: Path, weights: Path) -> None:
    image = SIRST / "images" / "Misc_40.png"  # 135 x 96, not a multiple of 64, not square
    result = CliRunner().invoke(
        cli, ["predict", str(image), "--out", str(tmp_path / "o"), "--weights", str(weights), "--prob", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    assert (row["height"], row["width"]) == (96, 135)
    with Image.open(tmp_path / "o" / "Misc_40.png") as im:
        assert im.size == (135, 96) and im.mode == "L"
        assert set(np.unique(np.asarray(im))) <= {0, 255}
    with Image.open(tmp_path / "o" / "Misc_40_prob.tif") as im:
        prob = np.asarray(im)
    assert prob.shape == (96, 135) and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1


@needs_sirst
def test_evaluate_prints_metrics_json(tmp_path: Path, weights: Path) -> None:
    data = write_data(tmp_path / "d", ["Misc_40"])
    result = CliRunner().invoke(cli, ["evaluate", str(data), "--split", "test", "--weights", str(weights), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"iou", "niou", "pd", "fa", "threshold"} <= set(out) and out["n_images"] == 1
    assert out["total_px"] == 135 * 96 and out["threshold"] == 0.5 and out["input_scale"] == 2.0
    assert out["flip_tta"] is False
    with_tta = CliRunner().invoke(cli, ["evaluate", str(data), "--split", "test", "--weights", str(weights),
                                        "--device", "cpu", "--tta-flips"])
    assert with_tta.exit_code == 0, with_tta.output
    assert json.loads(with_tta.stdout)["flip_tta"] is True


@needs_sirst
def test_flip_agreement_drops_a_false_alarm_through_evaluate_and_predict(tmp_path: Path) -> None:
    """The packaged weights on SIRST val image Misc_93: the target is found either way; the one
    false-alarm object (14 px) is not found by every flip and goes."""
    data = write_data(tmp_path / "d", ["Misc_93"], split="val")
    common = ["--split", "val", "--device", "cpu"]
    plain = json.loads(CliRunner().invoke(cli, ["evaluate", str(data), *common]).stdout)
    agreed_run = CliRunner().invoke(cli, ["evaluate", str(data), *common, "--flip-agreement"])
    assert agreed_run.exit_code == 0, agreed_run.output
    agreed = json.loads(agreed_run.stdout)
    assert (plain["flip_agreement"], agreed["flip_agreement"]) == (False, True)
    assert plain["n_matched"] == agreed["n_matched"] == 1
    assert (plain["false_alarm_px"], agreed["false_alarm_px"]) == (14, 0)
    masks = {}
    for name, extra in (("plain", []), ("agreed", ["--flip-agreement"])):
        run = CliRunner().invoke(cli, ["predict", str(data / "images" / "Misc_93.png"), "--out", str(tmp_path / name),
                                       "--device", "cpu", *extra])
        assert run.exit_code == 0, run.output
        masks[name] = np.asarray(Image.open(tmp_path / name / "Misc_93.png")) > 0
    assert (masks["plain"] & ~masks["agreed"]).sum() == 14 and not (masks["agreed"] & ~masks["plain"]).any()
    both = CliRunner().invoke(cli, ["evaluate", str(data), *common, "--flip-agreement", "--tta-flips"])
    one_line_error(both, "flip_agreement", "flip_tta")


def test_evaluate_empty_split_file(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "idx_427").mkdir()
    (tmp_path / "idx_427" / "test.txt").write_text("")
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path), "--split", "test", "--weights", str(weights)])
    one_line_error(result, "test.txt", "empty")


@needs_sirst
def test_train_mask_of_another_size(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d", ["Misc_40"], split="train")
    write_data(data, ["Misc_371"], split="val")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "masks" / "Misc_40_pixels0.png")
    result = CliRunner().invoke(cli, ["train", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"])
    one_line_error(result, "Misc_40_pixels0.png", "(96, 135)", "(10, 10)")


def test_train_bad_crop_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--crop-px", "100"])
    one_line_error(result, "crop_px", "100")


def test_predict_unreadable_image(tmp_path: Path, weights: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG but not really")
    result = CliRunner().invoke(cli, ["predict", str(bad), "--out", str(tmp_path / "o"), "--weights", str(weights)])
    one_line_error(result, "broken.png")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "absent.png"), "--out", str(tmp_path / "o")])
    one_line_error(result, "absent.png")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path), "--out", str(tmp_path / "o")])
    one_line_error(result, f"image {tmp_path}: expected an image file, got a folder")


def test_outputs_under_a_file_fail_with_one_line_before_any_work(tmp_path: Path, weights: Path) -> None:
    """--out where a file stands: one line naming it, before data or weights are read (the
    data folder and the weights here do not exist, and their errors do not come first)."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    absent_data = str(tmp_path / "no-data")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(image)
    runs = {
        "predict": ["predict", str(image), "--out", str(blocker / "masks"), "--weights", str(tmp_path / "none.safetensors")],
        "train": ["train", absent_data, "--out", str(blocker), "--device", "cpu"],
        "train --export": ["train", absent_data, "--out", str(tmp_path / "run"), "--export", str(blocker / "w.safetensors"),
                           "--device", "cpu"],
        "train-refiner": ["train-refiner", absent_data, "--out", str(blocker / "w.safetensors"),
                          "--weights", str(weights), "--device", "cpu"],
        "find-hard-negatives": ["find-hard-negatives", absent_data, "--out", str(blocker / "hn.json"), "--device", "cpu"],
    }
    for name, args in runs.items():
        result = CliRunner().invoke(cli, args)
        one_line_error(result, str(blocker))
        assert "got a file at" in result.stderr, name
    assert blocker.read_text() == "x"


def test_inference_options_out_of_range_fail_with_one_line(tmp_path: Path, weights: Path) -> None:
    """A threshold that is not a probability would write all-empty (or all-target) masks, and
    a device torch cannot name a traceback; each is one line naming the option instead."""
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(image)
    predict = ["predict", str(image), "--out", str(tmp_path / "o"), "--weights", str(weights)]
    evaluate = ["evaluate", str(tmp_path / "no-data"), "--split", "test", "--weights", str(weights)]
    cases = [
        ([*predict, "--threshold", "2"], "threshold: expected a probability in (0, 1), got 2.0"),
        ([*predict, "--threshold", "0"], "threshold: expected a probability in (0, 1), got 0.0"),
        ([*predict, "--batch-size", "0"], "batch_size: expected an integer >= 1, got 0"),
        ([*predict, "--device", "tpu"], "device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
        ([*evaluate, "--threshold", "-1"], "threshold: expected a probability in (0, 1), got -1.0"),
        ([*evaluate, "--threshold", "nan"], "threshold: expected a probability in (0, 1), got nan"),
    ]
    for args, needle in cases:
        one_line_error(CliRunner().invoke(cli, args), needle)
    assert not (tmp_path / "o").exists()


def test_predict_missing_weights(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(
        cli, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "none.safetensors")]
    )
    one_line_error(result, "none.safetensors")


def test_export_only_without_checkpoint(tmp_path: Path) -> None:
    args = ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--export", str(tmp_path / "w.safetensors"), "--export-only"]
    result = CliRunner().invoke(cli, args)
    one_line_error(result, "best.pt")


@needs_sirst
def test_train_refuses_a_val_split_made_of_training_images(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d", ["Misc_40", "Misc_23"], split="train")
    (data / "idx_427" / "val.txt").write_text("Misc_40\n")
    result = CliRunner().invoke(cli, ["train", str(data), "--out", str(tmp_path / "run"), "--crop-px", "64",
                                      "--batch-size", "2", "--device", "cpu"])
    one_line_error(result, "val_split", "shares 1 images with 'train' (e.g. Misc_40)")


@needs_sirst
def test_train_then_export_through_the_cli(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d", ["Misc_40", "Misc_23"], split="train")
    write_data(data, ["Misc_371"], split="val")  # never a training image: it chooses
    run, weights_out = tmp_path / "run", tmp_path / "w" / "mim.safetensors"
    args = ["train", str(data), "--out", str(run), "--epochs", "1", "--eval-every", "1", "--crop-px", "64",
            "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--export", str(weights_out),
            "--scale-range", "0.9", "1.1", "--p-target-crop", "1", "--p-clutter", "0.5",
            "--synthetic-paste", "native", "--synthetic-max-targets", "12", "--synthetic-busy-share", "0.5",
            "--synthetic-busy-scr", "2.5", "3.5"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["finished"] and summary["epochs_done"] == 1
    assert Path(summary["export"]["weights"]) == weights_out and weights_out.is_file()
    assert weights_out.with_suffix(".md").is_file()
    assert (run / "last.pt").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) == 1
    augment = torch.load(run / "last.pt", weights_only=True)["config"]["augment"]
    assert tuple(augment["scale_range"]) == (0.9, 1.1) and augment["p_target_crop"] == 1.0
    assert augment["flips"] is True  # the other augmentations keep their defaults
    synthetic = torch.load(run / "last.pt", weights_only=True)["config"]["synthetic"]
    assert synthetic["p_clutter"] == 0.5 and synthetic["p_synthetic"] == 0.0 and synthetic["paste_at"] == "native"
    assert synthetic["max_targets"] == 12 and synthetic["busy_share"] == 0.5
    assert tuple(synthetic["busy_scr_range"]) == (2.5, 3.5)


@needs_sirst
def test_a_refit_through_the_cli_exports_its_last_epoch(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d", ["Misc_40", "Misc_23", "Misc_371"], split="trainval")
    run, weights_out = tmp_path / "run", tmp_path / "w" / "mim.safetensors"
    args = ["train", str(data), "--out", str(run), "--train-split", "trainval", "--val-split", "none",
            "--threshold-without-val", "0.4", "--epochs", "2", "--crop-px", "64", "--batch-size", "2",
            "--num-workers", "0", "--device", "cpu", "--export", str(weights_out)]
    stopped = CliRunner().invoke(cli, [*args, "--time-budget-min", "0.001"])  # stops before its first epoch
    assert stopped.exit_code == 0, stopped.output
    assert "a refit exports its last epoch once the schedule is done" in json.loads(stopped.stdout)["export"]
    assert not weights_out.exists()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["finished"] and summary["best"]["epoch"] == 2 and summary["best"]["val"] is None
    assert weights_out.is_file() and "fixed before training" in weights_out.with_suffix(".md").read_text()
    bad = CliRunner().invoke(cli, [*args[:-2], "--threshold-without-val", "0"])
    one_line_error(bad, "threshold_without_val", "got 0.0")
    with_val = CliRunner().invoke(cli, ["train", str(data), "--out", str(run), "--threshold-without-val", "0.4"])
    one_line_error(with_val, "--threshold-without-val", "got --val-split val")


def test_train_augmentation_options_fail_with_one_line(tmp_path: Path) -> None:
    for args, needle in ((["--scale-range", "2", "1"], "scale_range: expected 0 < low <= high, got (2.0, 1.0)"),
                         (["--p-target-crop", "1.5"], "p_target_crop: expected a probability in [0, 1], got 1.5"),
                         (["--p-synthetic", "2"], "p_synthetic: expected a probability in [0, 1], got 2.0"),
                         (["--synthetic-max-targets", "0"], "max_targets: expected an integer >= 1, got 0"),
                         (["--synthetic-busy-share", "-0.1"], "busy_share: expected a share in [0, 1], got -0.1")):
        result = CliRunner().invoke(cli, ["train", str(tmp_path), "--out", str(tmp_path / "run"), *args])
        one_line_error(result, needle)


@needs_sirst
def test_train_refiner_writes_the_network_with_a_refiner_that_evaluate_uses(tmp_path: Path, weights: Path) -> None:
    from mim_model.weights import load_refiner, read_metadata

    data = write_data(tmp_path / "d", ["Misc_40"])
    out = tmp_path / "refined.safetensors"
    result = CliRunner().invoke(cli, ["train-refiner", str(data), "--split", "test", "--weights", str(weights),
                                      "--out", str(out), "--steps", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 1 and summary["recipe"]["steps"] == 4 and summary["progress"][-1]["step"] == 4
    assert load_refiner(out) is not None and load_refiner(weights) is None
    meta, source = read_metadata(out), read_metadata(weights)
    assert meta["mim_config"] == source["mim_config"] and meta["threshold"] == source["threshold"]
    assert json.loads(meta["refiner_train"])["split"] == "test"

    def scores(*extra: str) -> dict:
        run = CliRunner().invoke(cli, ["evaluate", str(data), "--split", "test", "--device", "cpu", *extra])
        assert run.exit_code == 0, run.output
        return json.loads(run.stdout)

    network_alone, refined, left_out = (scores("--weights", str(weights)), scores("--weights", str(out)),
                                        scores("--weights", str(out), "--no-refiner"))
    assert refined["refiner"] is True and network_alone["refiner"] is left_out["refiner"] is False
    assert {k: left_out[k] for k in ("iou", "pd", "fa")} == {k: network_alone[k] for k in ("iou", "pd", "fa")}

    def probabilities(name: str, *extra: str) -> np.ndarray:
        run = CliRunner().invoke(cli, ["predict", str(data / "images" / "Misc_40.png"), "--out", str(tmp_path / name),
                                       "--prob", "--device", "cpu", *extra])
        assert run.exit_code == 0, run.output
        with Image.open(tmp_path / name / "Misc_40_prob.tif") as im:
            return np.asarray(im)

    plain = probabilities("plain", "--weights", str(weights))
    np.testing.assert_array_equal(probabilities("alone", "--weights", str(out), "--no-refiner"), plain)
    assert not np.array_equal(probabilities("refined", "--weights", str(out)), plain)


def test_train_refiner_refuses_to_overwrite(tmp_path: Path, weights: Path) -> None:
    same = CliRunner().invoke(cli, ["train-refiner", str(tmp_path), "--weights", str(weights), "--out", str(weights)])
    one_line_error(same, "expected a new file", str(weights))
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"")
    exists = CliRunner().invoke(cli, ["train-refiner", str(tmp_path), "--weights", str(weights), "--out", str(taken)])
    one_line_error(exists, "taken.safetensors", "--overwrite")
    steps = CliRunner().invoke(cli, ["train-refiner", str(tmp_path), "--weights", str(weights), "--out",
                                     str(tmp_path / "n.safetensors"), "--steps", "0"])
    one_line_error(steps, "steps", "0")


@needs_sirst
def test_find_hard_negatives_then_train_on_them(tmp_path: Path) -> None:
    """The packaged weights on SIRST val image Misc_93 fire once where there is no target (14 px,
    as `evaluate` counts); that place becomes the centre of the training crops."""
    data = write_data(tmp_path / "d", ["Misc_93"], split="train")
    write_data(data, ["Misc_371"], split="val")
    found_path = tmp_path / "hn.json"
    run = CliRunner().invoke(cli, ["find-hard-negatives", str(data), "--split", "train", "--device", "cpu",
                                   "--out", str(found_path)])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout)
    assert (summary["n_points"], summary["n_images"], summary["threshold"], summary["refiner"]) == (1, 1, 0.5, True)
    assert summary["clear_px"] == 2
    content = json.loads(found_path.read_text())
    [(row, col, area_px, peak)] = content["points"]["Misc_93"]
    assert area_px == 14 and peak > 0.5
    assert 0 <= row < 256 and 0 <= col < 256 and (row, col) != (0, 0)
    again = CliRunner().invoke(cli, ["find-hard-negatives", str(data), "--split", "train", "--out", str(found_path)])
    one_line_error(again, str(found_path), "--overwrite")
    bad = CliRunner().invoke(cli, ["find-hard-negatives", str(data), "--threshold", "1", "--out", str(tmp_path / "x")])
    one_line_error(bad, "threshold: expected a probability in (0, 1), got 1.0")

    out, weights_out = tmp_path / "run", tmp_path / "w" / "mim.safetensors"
    args = ["train", str(data), "--out", str(out), "--epochs", "1", "--eval-every", "1", "--crop-px", "64",
            "--batch-size", "2", "--epoch-repeats", "2", "--num-workers", "0", "--device", "cpu",
            "--export", str(weights_out)]
    result = CliRunner().invoke(cli, [*args, "--hard-negatives", str(found_path), "--p-hard-negative", "0.5"])
    assert result.exit_code == 0, result.output
    config = torch.load(out / "last.pt", weights_only=True)["config"]
    assert config["hard_negatives"] == [str(found_path)] and config["p_hard_negative"] == 0.5
    assert "Hard negatives: 50% of the crops that are not synthetic" in weights_out.with_suffix(".md").read_text()

    fresh = ["--no-resume"]
    logging.getLogger("mim_model.training").setLevel(logging.WARNING)  # the run above raised it to INFO
    one_line_error(CliRunner().invoke(cli, ["-q", *args, *fresh, "--p-hard-negative", "0.5"]),
                   "hard_negatives: expected at least one file when p_hard_negative > 0")
    one_line_error(CliRunner().invoke(cli, ["-q", *args, *fresh, "--hard-negatives", str(found_path)]),
                   "p_hard_negative: expected a share above 0")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({**content, "points": {"Misc_1": [[1, 1, 1, 0.9]]}}))
    one_line_error(CliRunner().invoke(cli, ["-q", *args, *fresh, "--hard-negatives", str(elsewhere), "--p-hard-negative", "1"]),
                   "expected points in the training split's images, got none of its 1 images")
    one_line_error(CliRunner().invoke(cli, ["-q", *args, *fresh, "--hard-negatives", str(tmp_path / "none.json"),
                                            "--p-hard-negative", "1"]),
                   "none.json: expected a file, got none there")
