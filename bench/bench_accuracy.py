"""Accuracy analyses behind docs/benchmarks.md (training section and scan accuracy), on CPU.

    python bench/bench_accuracy.py val WEIGHTS... [--scales 1.5,2,2.5] [--average] [--split train] [--no-refiner]
    python bench/bench_accuracy.py val-errors [WEIGHTS]
    python bench/bench_accuracy.py outline-ceiling [--scales 2,3]
    python bench/bench_accuracy.py land-val WEIGHTS...
    python bench/bench_accuracy.py precision SPLIT [WEIGHTS] [--draws 10000]
    python bench/bench_accuracy.py selection-gain [LOG...]
    python bench/bench_accuracy.py protocol SPLIT [WEIGHTS] [--size-px 512]
    python bench/bench_accuracy.py scene-recall WEIGHTS... [--targets val [--val-seed 13]] [--input-scale 3] [--tile-px 256 --halo-px 64]
        [--window-px 64 --window-halo-px 16] [--keep DIR] [--tta-flips] [--thresholds 0.5,0.45]

``val``: SIRST val metrics (thresholds swept) of each weights file, of the mean of its
probabilities over several input scales (``--scales``), or of the average of all given
weights (``--average``: equal shares, a "weight soup"); ``--split train`` scores the training
split instead, to see how well the network fits its own data; a file's outline refiner (if
it carries one) is applied unless ``--no-refiner``. ``val-errors``: where val IoU is
lost at the weights' threshold: pixels of masks drawn too wide / too narrow, of false-alarm
objects and of missed targets. ``outline-ceiling``: how well the network's output grid (a
quarter of its input) can draw the val masks: each mask averaged onto it, and logits fitted
to it (both up-sampled as the network does). ``land-val``: Pd/Fa on the training's land
validation crops (val-split targets on procedural clutter) at each weights' threshold.
``precision``: how precisely a split measures a weights file: the set IoU and Fa (weights'
threshold, refiner on) over bootstrap resamples of the split's images (a report; on test it
chooses nothing). ``selection-gain``: from training logs (``docs/train_log_*.txt``), how much
choosing the evaluation with the best val IoU gains over the run's last one, which is what
choosing a checkpoint on the scored split adds to its figure.
``protocol``: a split's figures scored as ACM's code (which MiM's author says his training
resembles) scores them, on masks resized nearest to ``--size-px`` squared: the same
answers (native resolution, refiner on) either as probabilities resized bilinear and then
thresholded, or as thresholded masks resized nearest like the truth; beside the native
scoring. It shows how much of a difference to published figures is the metric's protocol
rather than the detector (a report; on test it chooses nothing).
``scene-recall``: targets found within 3 px on the scan accuracy test's 4000^2 Sentinel-2
scene (same construction and seed as ``tests/pipeline/test_scan_accuracy.py``); with
``--targets val`` on a validation scene built the same way from *val-split* targets at
other places (seed 12; ``--val-seed`` builds further validation scenes), where scan
settings such as ``--input-scale`` are chosen before the test scene is run with them;
``--thresholds`` also counts at other thresholds from each scan's stored probability
(thresholded and vectorised as the scan does, checked against the scan's own detections first).

Data: ``$IRSCAN_SHARED_DATA`` or ../shared/data. Prints one JSON object per result.
Nothing here chooses weights for the package on test data: ``val`` and ``land-val`` are
the validation figures, ``scene-recall`` is the test of the scan issue.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mim_model.training.data import SirstSplit
from mim_model.training.inference import (
    predict_probs,
    weights_input_scale,
    weights_threshold,
)
from mim_model.training.metrics import IRSTDMetrics, ThresholdSweep, image_counts
from mim_model.weights import (
    DEFAULT_WEIGHTS_PATH,
    load_model,
    load_refiner,
    read_metadata,
    save_safetensors,
    weights_sha256,
)
from tests.scene_builder import shared_data_dir

THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
EIGHT = np.ones((3, 3), bool)


def _split(name: str) -> SirstSplit:
    data = shared_data_dir()
    if data is None:
        sys.exit("bench_accuracy: shared data not found: set IRSCAN_SHARED_DATA")
    return SirstSplit.load(data / "sirst", name, "idx_427")


def _probs(model: torch.nn.Module, split: SirstSplit, scale: float, refiner=None) -> list[np.ndarray]:  # noqa: ANN001
    return predict_probs(model, split.images01(), device="cpu", amp=False, batch_size=4, scale=scale, refiner=refiner)


def _compact(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 6) for k in ("iou", "niou", "pd", "fa")}


def _sweep(probs: list[np.ndarray], masks: list[np.ndarray], thresholds=THRESHOLDS) -> dict:
    sweep = ThresholdSweep(thresholds)
    for prob, mask in zip(probs, masks, strict=True):
        sweep.update(prob, mask)
    threshold, best = sweep.best("iou")
    results = sweep.results()
    at_half = results.get(0.5)
    return {"best_threshold": threshold, "best": _compact(best), "at_0.5": _compact(at_half) if at_half else None,
            "iou_by_threshold": {f"{t:g}": round(float(r["iou"]), 6) for t, r in sorted(results.items())}}


def _averaged(paths: list[str]) -> torch.nn.Module:
    models = [load_model(p) for p in paths]
    states = [m.state_dict() for m in models]
    mean = {k: sum(s[k] for s in states) / len(states) if states[0][k].is_floating_point() else states[0][k]
            for k in states[0]}
    models[0].load_state_dict(mean)
    return models[0]


def cmd_val(args: argparse.Namespace) -> None:
    split = _split(args.split)
    scales = [float(x) for x in args.scales.split(",")]
    if args.save and not (args.average and args.split == "val" and len(scales) == 1):
        sys.exit(f"bench_accuracy: --save: expected --average, --split val and one scale, got {sys.argv[2:]}")
    # a soup averages networks: no refiner; a single file's refiner (if any) is applied unless --no-refiner
    named = [("average of " + ", ".join(args.weights), _averaged(args.weights), None)] if args.average else [
        (w, load_model(w), None if args.no_refiner else load_refiner(w)) for w in args.weights]
    if args.save and scales[0] != weights_input_scale(named[0][1]):
        sys.exit(f"bench_accuracy: --scales: expected the weights' {weights_input_scale(named[0][1])}, got {scales[0]}")
    for name, model, refiner in named:
        runs = [_probs(model, split, scale, refiner) for scale in scales]
        probs = [sum(parts) / len(parts) for parts in zip(*runs, strict=True)]
        result = _sweep(probs, split.masks)
        print(json.dumps({"weights": name, "split": args.split, "scales": scales, "refiner": refiner is not None,
                          **result}), flush=True)
        if args.save:
            _save_soup(model, args.weights, result, args.save)


def _save_soup(model: torch.nn.Module, paths: list[str], result: dict, out: str) -> None:
    """Write an averaged model as float16 weights with the threshold best on val.

    What the members share (data, scale, layout, normalisation) is kept from the first; what
    is one member's own (its training config, epoch, commit) is listed per member under
    ``soup_members``, with each file's sha256, so that the soup can be traced to its runs; a
    member that is itself a soup brings its own ``soup_members`` along
    (:func:`mim_model.weights.soup_runs` resolves the tree).
    """
    own = ("train_config", "epoch", "epochs_trained", "git_commit", "created", "val_metrics", "soup_of",
           "soup_members", "mim_config")
    metas = [read_metadata(p) for p in paths]
    meta = {k: v for k, v in metas[0].items() if k not in own}
    members = [{"file": Path(p).name, "sha256": weights_sha256(p),
                **{k: m[k] for k in ("epoch", "epochs_trained", "git_commit", "threshold") if k in m},
                "train_config": json.loads(m.get("train_config", "{}")),
                **({"soup_members": json.loads(m["soup_members"])} if "soup_members" in m else {})}
               for p, m in zip(paths, metas, strict=True)]
    meta.update(threshold=f"{result['best_threshold']:.4f}", epoch="average",
                created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                soup_of=json.dumps([Path(p).name for p in paths]), soup_members=json.dumps(members),
                val_metrics=json.dumps(result["best"]))
    save_safetensors(model, out, metadata=meta)


def cmd_val_errors(args: argparse.Namespace) -> None:
    split = _split("val")
    model = load_model(args.weights)
    threshold = weights_threshold(model)
    probs = _probs(model, split, weights_input_scale(model))
    counts = {"right": 0, "too_wide": 0, "false_alarm": 0, "too_narrow": 0, "missed": 0}
    for prob, mask in zip(probs, split.masks, strict=True):
        pred, mask = prob > threshold, mask > 0
        counts["right"] += int((pred & mask).sum())
        labels, n = ndimage.label(pred, EIGHT)
        for k in range(1, n + 1):
            part = labels == k
            key = "too_wide" if (part & mask).any() else "false_alarm"
            counts[key] += int((part & ~mask).sum())
        truth, m = ndimage.label(mask, EIGHT)
        for k in range(1, m + 1):
            part = truth == k
            key = "too_narrow" if (part & pred).any() else "missed"
            counts[key] += int((part & ~pred).sum())
    print(json.dumps({"weights": args.weights, "threshold": threshold, "pixels": counts}), flush=True)


def _to_native(logits_grid: torch.Tensor, padded: tuple[int, int], scaled: tuple[int, int],
               native: tuple[int, int]) -> torch.Tensor:
    """As the network and irscan do: bilinear up to the padded input, crop, sigmoid, resize."""
    up = F.interpolate(logits_grid, size=padded, mode="bilinear", align_corners=False)[..., : scaled[0], : scaled[1]]
    return F.interpolate(torch.sigmoid(up), size=native, mode="bilinear", align_corners=False, antialias=True)


def cmd_outline_ceiling(args: argparse.Namespace) -> None:
    split = _split("val")
    torch.manual_seed(0)
    for scale in (float(x) for x in args.scales.split(",")):
        averaged, fitted = ThresholdSweep((0.5,)), ThresholdSweep((0.5,))
        for mask in split.masks:
            h, w = mask.shape
            scaled = (round(h * scale), round(w * scale))
            padded = (-(-scaled[0] // 64) * 64, -(-scaled[1] // 64) * 64)
            truth = torch.from_numpy(mask.astype(np.float32))[None, None]
            big = F.pad(F.interpolate(truth, size=scaled, mode="bilinear", align_corners=False),
                        (0, padded[1] - scaled[1], 0, padded[0] - scaled[0]))
            share = F.avg_pool2d(big, 4).clamp(1e-4, 1 - 1e-4)
            averaged.update(_to_native(torch.logit(share), padded, scaled, (h, w))[0, 0].numpy(), mask)
            grid = torch.full_like(share, -4.0, requires_grad=True)
            optimiser = torch.optim.Adam([grid], lr=0.3)
            for _ in range(args.steps):
                optimiser.zero_grad()
                prob = _to_native(grid, padded, scaled, (h, w)).clamp(1e-6, 1 - 1e-6)
                inter = (prob * truth).sum()
                loss = F.binary_cross_entropy(prob, truth) + 1 - inter / (prob.sum() + truth.sum() - inter)
                loss.backward()
                optimiser.step()
            with torch.no_grad():
                fitted.update(_to_native(grid, padded, scaled, (h, w))[0, 0].numpy(), mask)
        print(json.dumps({"input_scale": scale, "mask_averaged": _compact(averaged.results()[0.5]),
                          "logits_fitted": _compact(fitted.results()[0.5])}), flush=True)


def cmd_land_val(args: argparse.Namespace) -> None:
    from mim_model.training.synthetic import land_validation_crops

    crops = land_validation_crops(_split("val"), args.crops)
    for path in args.weights:
        model = load_model(path)
        threshold = weights_threshold(model)
        probs = predict_probs(model, [img for img, _ in crops], device="cpu", amp=False,
                              batch_size=4, scale=weights_input_scale(model))
        sweep = ThresholdSweep((threshold,))
        for prob, (_, mask) in zip(probs, crops, strict=True):
            sweep.update(prob, mask)
        result = sweep.results()[threshold]
        print(json.dumps({"weights": path, "threshold": threshold, **_compact(result),
                          "n_targets": result["n_targets"], "n_matched": result["n_matched"]}), flush=True)


def cmd_precision(args: argparse.Namespace) -> None:
    split = _split(args.split)
    model, refiner = load_model(args.weights), load_refiner(args.weights)
    threshold = weights_threshold(model)
    probs = _probs(model, split, weights_input_scale(model), refiner)
    counts = np.array([[c.intersection_px, c.union_px, c.false_alarm_px, c.total_px]
                       for c in (image_counts(p > threshold, m) for p, m in zip(probs, split.masks, strict=True))],
                      dtype=np.float64)
    rng = np.random.default_rng(args.seed)
    draws = counts[rng.integers(0, len(counts), (args.draws, len(counts)))].sum(axis=1)
    iou, fa = draws[:, 0] / draws[:, 1], draws[:, 2] / draws[:, 3]
    total = counts.sum(axis=0)
    print(json.dumps({
        "weights": str(args.weights or DEFAULT_WEIGHTS_PATH), "split": args.split, "images": len(counts),
        "threshold": threshold, "iou": round(float(total[0] / total[1]), 4), "fa": float(f"{total[2] / total[3]:.3e}"),
        "draws": args.draws, "iou_95": [round(float(q), 4) for q in np.quantile(iou, [0.025, 0.975])],
        "fa_95": [float(f"{q:.3e}") for q in np.quantile(fa, [0.025, 0.975])],
        "share_iou_at_least": {f"{t:g}": round(float((iou >= t).mean()), 4) for t in (0.74, 0.76, 0.78, 0.80)},
    }), flush=True)


def resized_bilinear(prob: np.ndarray, size_px: int) -> np.ndarray:
    """A probability map resized bilinear to ``size_px`` squared, as ACM's test transform
    resizes the image (PIL ``BILINEAR``)."""
    return np.asarray(Image.fromarray(prob.astype(np.float32), mode="F").resize((size_px, size_px), Image.BILINEAR))


def resized_nearest(mask: np.ndarray, size_px: int) -> np.ndarray:
    """A boolean mask resized nearest to ``size_px`` squared, as ACM's test transform resizes
    the truth (PIL ``NEAREST``)."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size_px, size_px), Image.NEAREST)) > 127


def cmd_protocol(args: argparse.Namespace) -> None:
    split = _split(args.split)
    model, refiner = load_model(args.weights), load_refiner(args.weights)
    threshold = weights_threshold(model)
    probs = _probs(model, split, weights_input_scale(model), refiner)
    native, resized_prob, resized_mask = IRSTDMetrics(), IRSTDMetrics(), IRSTDMetrics()
    for prob, mask in zip(probs, split.masks, strict=True):
        native.update(prob > threshold, mask)
        truth = resized_nearest(mask, args.size_px)
        resized_prob.update(resized_bilinear(prob, args.size_px) > threshold, truth)
        resized_mask.update(resized_nearest(prob > threshold, args.size_px), truth)
    for name, metrics in (("native", native),
                          (f"{args.size_px} px, probabilities resized bilinear", resized_prob),
                          (f"{args.size_px} px, masks resized nearest", resized_mask)):
        result = metrics.result()
        print(json.dumps({"weights": str(args.weights or DEFAULT_WEIGHTS_PATH), "split": args.split,
                          "scoring": name, "threshold": threshold, "refiner": refiner is not None,
                          **_compact(result), "n_targets": result["n_targets"], "n_matched": result["n_matched"],
                          "false_alarm_px": result["false_alarm_px"]}), flush=True)


_RUN_HEADER = re.compile(r"^(?:##|=====)\s*(?:run\s+)?r?(\d+)\b")
_EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) .*\| val iou ([0-9.]+) ")


def cmd_selection_gain(args: argparse.Namespace) -> None:
    paths = args.logs or sorted(str(p) for p in (REPO / "docs").glob("train_log_*.txt"))
    gains = []
    for path in paths:
        runs: dict[str, dict[int, tuple[int, float]]] = {}
        name = Path(path).stem
        for line in Path(path).read_text().splitlines():
            head = _RUN_HEADER.match(line)
            if head:  # logs of several runs: "## r44.log", "## r31", "===== run 15: ...", "===== r35 (..."
                name = f"{Path(path).stem}:r{head.group(1)}"
                continue
            m = _EPOCH_LINE.search(line)
            if m:  # a resumed run logs some epochs twice: the later line wins
                runs.setdefault(name, {})[int(m.group(1))] = (int(m.group(2)), float(m.group(3)))
        for run, evals in runs.items():
            last_epoch = max(evals)
            total, last = evals[last_epoch]
            # whole runs only, logged as one run (older logs of several runs interleave them)
            if last_epoch != total or len(evals) < 8 or len(evals) > total // min(evals) + 1:
                continue
            best = max(iou for _, iou in evals.values())
            gains.append(best - last)
            print(json.dumps({"run": run, "evaluations": len(evals), "last": last, "best": best,
                              "gain": round(best - last, 4)}), flush=True)
    if not gains:
        sys.exit("bench_accuracy: selection-gain: expected logs with whole runs, got none")
    q = np.quantile(gains, [0.25, 0.5, 0.75])
    print(json.dumps({"runs": len(gains), "median_gain": round(float(q[1]), 4),
                      "quartiles": [round(float(q[0]), 4), round(float(q[2]), 4)], "max_gain": round(max(gains), 4)}))


def cmd_scene_recall(args: argparse.Namespace) -> None:
    if args.keep:  # the scene and every scan's outputs stay there, for a closer look
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        _scene_recall(args, work)
        return
    with tempfile.TemporaryDirectory(prefix="scene_recall_") as work:
        _scene_recall(args, Path(work))


def _scene_recall(args: argparse.Namespace, work: Path) -> None:
    import geopandas as gpd
    from click.testing import CliRunner

    from pipeline.cli.main import cli
    from tests.scene_builder import build_scene, load_target_chips

    side_px, core_px = 4000, 384
    scene = work / "s2_b12_mosaic.tif"
    data = shared_data_dir()
    if args.targets == "test" and args.val_seed is not None:
        sys.exit("bench_accuracy: --val-seed: expected only with --targets val (the test scene's seed is 11)")
    seed = 11 if args.targets == "test" else 12 if args.val_seed is None else args.val_seed
    truth = build_scene(scene, side_px, side_px, load_target_chips(data / "sirst", args.targets), count=60,
                        core_px=core_px, straddle=24, seed=seed, nodata_band=(4 * core_px, side_px))
    extra = ["--input-scale", str(args.input_scale)] if args.input_scale is not None else []
    for option, value in (("--window-px", args.window_px), ("--window-halo-px", args.window_halo_px)):
        if value is not None:
            extra += [option, str(value)]
    if args.tta_flips:
        extra.append("--tta-flips")
    for index, path in enumerate(args.weights):
        out = work / f"out{index}"
        result = CliRunner().invoke(cli, ["scan", str(scene), "--out", str(out), "--tile-px", str(args.tile_px),
                                          "--halo-px", str(args.halo_px), "--batch-size", "4", "--weights", path,
                                          "--overwrite", *extra])
        if result.exit_code != 0:
            sys.exit(f"bench_accuracy: scan with {path} failed: {result.output.strip()}")
        frame = gpd.read_parquet(out / scene.stem / "detections.parquet")
        report = json.loads((out / scene.stem / "report.json").read_text())
        found = _found(truth, frame["row"].to_numpy(), frame["col"].to_numpy())
        common = {"weights": path, "targets_split": args.targets, "scene_seed": seed,
                  "input_scale": args.input_scale, "tile_px": args.tile_px, "halo_px": args.halo_px,
                  "window_px": args.window_px, "window_halo_px": args.window_halo_px, "tta_flips": args.tta_flips}
        print(json.dumps({**common, "threshold": report["threshold"], "found": found, "targets": len(truth),
                          "recall": round(found / len(truth), 4), "detections": len(frame),
                          "mpx_per_s": report.get("mpx_per_s")}), flush=True)
        if args.thresholds:
            _rethreshold(out / scene.stem / "mask.zarr", truth, frame, common, args.thresholds)


def _found(truth: list, rows: np.ndarray, cols: np.ndarray) -> int:
    """Targets with a detection's centroid closer than 3 px."""
    return sum(bool(np.any(np.hypot(rows - t.row, cols - t.col) < 3.0)) for t in truth)


def _rethreshold(store_path: Path, truth: list, frame, common: dict, thresholds: list[float]) -> None:
    """Found and detections at other thresholds, from one scan's stored probability.

    The mask is the scan's own (:func:`pipeline.stitch.threshold_mask`) and the objects come
    from :func:`pipeline.vectorize.vectorize_ref`, which gives exactly what the scan's chunked
    vectorisation gives. Checked first: at the scan's own threshold it must reproduce the
    scan's detections, else nothing is printed.
    """
    from pipeline.stitch import threshold_mask
    from pipeline.vectorize import vectorize_ref
    from pipeline.write_zarr import open_mask_store

    store = open_mask_store(store_path)
    prob = np.asarray(store.probability[...], dtype=np.float32)

    def objects(threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
        detections = vectorize_ref(threshold_mask(prob, threshold), prob, store.spec.core_px)
        return np.array([d.row for d in detections]), np.array([d.col for d in detections]), len(detections)

    rows, cols, count = objects(store.threshold)
    if count != len(frame) or not (np.allclose(np.sort(rows), np.sort(frame["row"].to_numpy()))
                                   and np.allclose(np.sort(cols), np.sort(frame["col"].to_numpy()))):
        sys.exit(f"bench_accuracy: --thresholds: re-thresholding {store_path} at the scan's threshold "
                 f"{store.threshold} gave {count} objects, expected the scan's {len(frame)}")
    for threshold in thresholds:
        rows, cols, count = objects(threshold)
        found = _found(truth, rows, cols)
        print(json.dumps({**common, "threshold": threshold, "from": "rethreshold", "found": found,
                          "targets": len(truth), "recall": round(found / len(truth), 4),
                          "detections": count}), flush=True)


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated probabilities, got {text!r}") from None
    if not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected probabilities in [0, 1), got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("val")
    p.add_argument("weights", nargs="+")
    p.add_argument("--scales", default="2")
    p.add_argument("--average", action="store_true")
    p.add_argument("--no-refiner", action="store_true", help="leave out the outline refiner a weights file carries")
    p.add_argument("--split", choices=("val", "train"), default="val", help="never test: nothing is chosen on it")
    p.add_argument("--save", metavar="FILE", help="with --average and --split val: write the average as weights, "
                   "with the threshold best on val")
    p.set_defaults(run=cmd_val)
    p = sub.add_parser("val-errors")
    p.add_argument("weights", nargs="?", default=str(DEFAULT_WEIGHTS_PATH))
    p.set_defaults(run=cmd_val_errors)
    p = sub.add_parser("outline-ceiling")
    p.add_argument("--scales", default="2,3")
    p.add_argument("--steps", type=int, default=400)
    p.set_defaults(run=cmd_outline_ceiling)
    p = sub.add_parser("land-val")
    p.add_argument("weights", nargs="+")
    p.add_argument("--crops", type=int, default=64)
    p.set_defaults(run=cmd_land_val)
    p = sub.add_parser("precision")
    p.add_argument("split", choices=("val", "test"))
    p.add_argument("weights", nargs="?", default=None, help="[the packaged weights]")
    p.add_argument("--draws", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_precision)
    p = sub.add_parser("protocol")
    p.add_argument("split", choices=("val", "test"))
    p.add_argument("weights", nargs="?", default=None, help="[the packaged weights]")
    p.add_argument("--size-px", type=int, default=512, help="the side images and masks are resized to [512]")
    p.set_defaults(run=cmd_protocol)
    p = sub.add_parser("selection-gain")
    p.add_argument("logs", nargs="*", help="training logs [docs/train_log_*.txt]")
    p.set_defaults(run=cmd_selection_gain)
    p = sub.add_parser("scene-recall")
    p.add_argument("weights", nargs="+")
    p.add_argument("--targets", choices=("test", "val"), default="test",
                   help="test: the accuracy test's scene; val: a validation scene of val-split targets")
    p.add_argument("--val-seed", type=int, default=None,
                   help="with --targets val: the validation scene's seed (places and targets) [12]")
    p.add_argument("--input-scale", type=float, default=None, help="irscan scan --input-scale [the weights']")
    p.add_argument("--tile-px", type=int, default=512, help="irscan scan --tile-px [512]")
    p.add_argument("--halo-px", type=int, default=64, help="irscan scan --halo-px [64]")
    p.add_argument("--window-px", type=int, default=None, help="irscan scan --window-px [the scan's default]")
    p.add_argument("--window-halo-px", type=int, default=None, help="irscan scan --window-halo-px [the scan's default]")
    p.add_argument("--keep", metavar="DIR", help="build the scene and keep the scans' outputs in DIR [a temporary folder]")
    p.add_argument("--tta-flips", action="store_true", help="irscan scan --tta-flips (4x the compute)")
    p.add_argument("--thresholds", type=_thresholds, default=None, metavar="T1,T2,...",
                   help="also count found and detections at these thresholds, from each scan's stored probability")
    p.set_defaults(run=cmd_scene_recall)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
