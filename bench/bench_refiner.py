"""Outline-refiner recipes compared on SIRST val (docs/benchmarks.md, "Refiner recipes").

    python bench/bench_refiner.py DATA_DIR --network run3=W1 --network run36=W2 --seeds 0,1,2 \
        --device cuda --workers 6 --out RESULTS.jsonl [--refit run8=W3 --refit-split trainval --refit-dir DIR]

For each network (trained on ``train`` only) its probabilities on train and val are computed
once (fp32, the weights' input scale, no flips); every recipe of :data:`RECIPES` is fitted
to its train probabilities with each seed, and the refined val probabilities are scored at
the weights' threshold or ``--threshold`` (IoU, nIoU, Pd, Fa). One JSON line per fit, then
one summary line per recipe (means over networks and seeds). With ``--refit``, each recipe
is also fitted (seed 0) to that network on ``--refit-split`` and its refiner alone is saved as
``DIR/<recipe>.safetensors`` (to be put beside the network with
:func:`mim_model.weights.save_safetensors`). With ``--flip-agreement`` every scoring is
repeated with :mod:`mim_model.training.flip_agreement` (the network's val probabilities of
the three flipped images are computed once; each fit refines them in their own orientation),
reported under ``flip_agreement`` (docs/benchmarks.md, "Flip agreement"), and with two of the
three flipped passes enough, under ``flip_majority`` ("Flip majority"). With ``--closing``
each fit's refined masks are also scored closed once and twice
(:func:`close_mask`; not adopted, so it lives here), under ``close1`` and ``close2``
(docs/benchmarks.md, "Closing the mask"). With ``--sweep`` each fit is also scored at the
thresholds :data:`SWEEP_THRESHOLDS`, under ``sweep`` (docs/benchmarks.md, "The threshold of
network + refiner"). With ``--scales`` the network's answers (those the refiners are fitted to
and those scored) are the mean of its probabilities at those input scales (docs/benchmarks.md,
"Answers averaged over three input scales"). With ``--ensemble`` each network's refined val
probabilities are also averaged over its fits (of one recipe, all seeds) and scored, one line
each with ``"ensemble"`` (docs/benchmarks.md, "Refiner ensembles"); with ``--vote`` also the
majority vote of their masks (:func:`vote_mask`), one line each with ``"vote"`` (docs/benchmarks.md,
"Refiner fits that vote"). ``--refit-seeds`` fits
the refit to those seeds (``DIR/<recipe>.safetensors`` for seed 0,
``DIR/<recipe>_seed<N>.safetensors`` for the others). Nothing is scored on test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mim_model.refiner import RefinerConfig, refine_probs  # noqa: E402
from mim_model.training.data import SirstSplit  # noqa: E402
from mim_model.training.flip_agreement import FLIP_AXES, keep_agreed  # noqa: E402
from mim_model.training.inference import predict_probs, weights_input_scale, weights_threshold  # noqa: E402
from mim_model.training.metrics import IRSTDMetrics, ThresholdSweep  # noqa: E402
from mim_model.training.refine import RefinerTrainConfig, fit_refiner  # noqa: E402
from mim_model.weights import load_model  # noqa: E402

#: name -> (refiner shape, training recipe). "default" is the recipe packaged first (1,500
#: steps); "steps4x" won on val and is the default of RefinerTrainConfig now.
RECIPES: dict[str, tuple[RefinerConfig, RefinerTrainConfig]] = {
    "default": (RefinerConfig(), RefinerTrainConfig(steps=1500)),
    "steps4x": (RefinerConfig(), RefinerTrainConfig(steps=6000)),
    "wide": (RefinerConfig(width=64, dilations=(1, 2, 4, 8, 1)), RefinerTrainConfig(steps=1500)),
    "wide_steps4x": (RefinerConfig(width=64, dilations=(1, 2, 4, 8, 1)), RefinerTrainConfig(steps=6000)),
    # the second round (docs/benchmarks.md, "Refiner recipes, second round"): against steps4x
    "steps16x": (RefinerConfig(), RefinerTrainConfig(steps=24000)),
    "steps4x_batch4x": (RefinerConfig(), RefinerTrainConfig(steps=6000, batch_size=128)),
    # the fourth round (docs/benchmarks.md, "Refiner recipes, fourth round"): against steps4x
    "steps4x_jitter": (RefinerConfig(), RefinerTrainConfig(steps=6000, logit_slope_jitter=0.4, logit_shift_jitter=1.5)),
    # the sixth round (docs/benchmarks.md, "Refiner recipes, sixth round"): against steps4x
    "steps4x_tfa": (RefinerConfig(), RefinerTrainConfig(steps=6000, loss="tversky-fa")),
}


#: ``--sweep``: the thresholds every fit is also scored at (0.30 to 0.80 by 0.05)
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(0.30 + 0.05 * k, 2) for k in range(11))


def _probs(weights: str, split: SirstSplit, device: str, flip_axes: tuple[int, ...] = (),
           scales: tuple[float, ...] = ()) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Images in [0, 1] and the network's probabilities (of the images flipped on
    ``flip_axes``, flipped back; the mean over input ``scales``, else at the weights' own
    scale) and the weights' threshold."""
    model = load_model(weights, device=device)
    images = split.images01()
    flipped = [np.ascontiguousarray(np.flip(im, flip_axes)) for im in images]
    runs = [predict_probs(model, flipped, device=device, amp=False, batch_size=8, scale=scale)
            for scale in (scales or (weights_input_scale(model),))]
    probs = [sum(parts) / len(parts) for parts in zip(*runs, strict=True)]
    return images, [np.ascontiguousarray(np.flip(p, flip_axes)) for p in probs], weights_threshold(model)


def close_mask(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``mask`` plus the gaps an ``iterations``-fold 3 x 3 closing fills (padded, so the image
    border does not erode it); no detected pixel is removed."""
    pad = iterations + 1
    closed = ndimage.binary_closing(np.pad(mask, pad), structure=np.ones((3, 3), bool), iterations=iterations)
    return closed[pad:-pad, pad:-pad] | mask


def _scores(metrics: IRSTDMetrics) -> dict:
    scores = metrics.result()
    return {**{k: round(float(scores[k]), 6) for k in ("iou", "niou", "pd", "fa")},
            "false_alarm_px": int(scores["false_alarm_px"])}


def _score_masks(predicted: Iterable[np.ndarray], masks: Iterable[np.ndarray]) -> dict:
    """Scores (:func:`_scores`) of the predicted boolean masks against ``masks``, image by image."""
    metrics = IRSTDMetrics()
    for pred, mask in zip(predicted, masks, strict=True):
        metrics.update(pred, mask)
    return _scores(metrics)


def _agreed_scores(probs: list[np.ndarray], flipped: list[list[np.ndarray]], masks: list[np.ndarray],
                   threshold: float) -> dict[str, dict]:
    """Scores of the flip-agreed masks, under ``flip_agreement`` (every flipped pass must see
    a component) and ``flip_majority`` (two of the three); ``flipped[k][i]``: pass k of image
    i, on the image's grid."""
    return {key: _score_masks((keep_agreed(prob, [f[i] for f in flipped], threshold, min_seen)
                               for i, prob in enumerate(probs)), masks)
            for key, min_seen in (("flip_agreement", None), ("flip_majority", 2))}


def _fit_and_score(job: dict) -> dict:
    torch.set_num_threads(job.get("threads", 2))
    cache = np.load(job["cache"], allow_pickle=True)
    config, cfg = RECIPES[job["recipe"]]
    cfg = RefinerTrainConfig(**{**asdict(cfg), "seed": job["seed"], **({"steps": job["steps"]} if job.get("steps") else {})})
    t0 = time.monotonic()
    refiner, records = fit_refiner(list(cache["fit_images"]), list(cache["fit_probs"]), list(cache["fit_masks"]), cfg,
                                   config, device=job["device"], log_every=cfg.steps)
    fit_s = time.monotonic() - t0
    result = {k: job[k] for k in ("network", "recipe", "seed")}
    result.update(fit_seconds=round(fit_s, 1), final_loss=records[-1]["loss"])
    if job.get("save"):
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().half().contiguous() for k, v in refiner.state_dict().items()}, job["save"],
                  metadata={"refiner_config": config.to_json(), "refiner_train": json.dumps({"recipe": asdict(cfg),
                            "progress": records})})
        result["saved"] = job["save"]
        return result
    threshold = float(cache["threshold"])
    refined = [refine_probs(refiner, img, prob) for img, prob in zip(cache["val_images"], cache["val_probs"], strict=True)]
    result.update(_score_masks((prob > threshold for prob in refined), cache["val_masks"]))
    if job.get("refined_out"):
        np.save(job["refined_out"], np.array(refined, dtype=object), allow_pickle=True)
    if job.get("sweep"):
        sweep = ThresholdSweep(job["sweep"])
        for prob, mask in zip(refined, cache["val_masks"], strict=True):
            sweep.update(prob, mask)
        result["sweep"] = {f"{t:.2f}": _scores(scored) for t, scored in sweep.metrics.items()}
    for iterations in job.get("closing", ()):
        result[f"close{iterations}"] = _score_masks((close_mask(prob > threshold, iterations) for prob in refined),
                                                    cache["val_masks"])
    if "val_flip_probs" in cache.files:
        flipped = [[np.flip(refine_probs(refiner, np.flip(img, axes), np.flip(prob, axes)), axes)
                    for img, prob in zip(cache["val_images"], probs, strict=True)]
                   for axes, probs in zip(FLIP_AXES, cache["val_flip_probs"], strict=True)]
        result.update(_agreed_scores(refined, flipped, list(cache["val_masks"]), threshold))
    return result


def vote_mask(fits: list[np.ndarray], threshold: float) -> np.ndarray:
    """Pixels where more than half of ``fits`` (refined probabilities of one image) exceed
    ``threshold``: two of three fits for three."""
    votes = sum((fit > threshold).astype(np.int32) for fit in fits)
    return 2 * votes > len(fits)


def _ensemble_rows(jobs: list[dict], masks: list[np.ndarray], vote: bool = False) -> list[dict]:
    """One row per (network, recipe): the mean of its fits' refined val probabilities, scored
    at the network's threshold; with ``vote`` also their majority vote (:func:`vote_mask`),
    one row marked ``"vote"``."""
    rows = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for job in jobs:
        if job.get("refined_out"):
            groups.setdefault((job["network"], job["recipe"]), []).append(job)
    for (network, recipe), members in groups.items():
        threshold = float(np.load(members[0]["cache"], allow_pickle=True)["threshold"])
        fits = [np.load(m["refined_out"], allow_pickle=True) for m in members]
        seeds = [m["seed"] for m in members]
        rows.append({"network": network, "recipe": recipe, "ensemble": seeds,
                     **_score_masks((sum(f[i] for f in fits) / len(fits) > threshold for i in range(len(masks))), masks)})
        if vote:
            rows.append({"network": network, "recipe": recipe, "vote": seeds,
                         **_score_masks((vote_mask([f[i] for f in fits], threshold) for i in range(len(masks))), masks)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--network", action="append", default=[], metavar="NAME=WEIGHTS", help="trained on train only")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads-per-fit", type=int, default=2, help="torch threads of each fit [2]")
    parser.add_argument("--recipe-seeds", action="append", default=[], metavar="NAME=S1,S2",
                        help="seeds of one recipe instead of --seeds (repeatable)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/bench_refiner")
    parser.add_argument("--refit", metavar="NAME=WEIGHTS")
    parser.add_argument("--refit-split", default="trainval")
    parser.add_argument("--refit-dir")
    parser.add_argument("--refit-seeds", default="0", help="seeds of the refit fits [0]")
    parser.add_argument("--vote", action="store_true",
                        help="with --ensemble: also score the majority vote of each network's fits' masks")
    parser.add_argument("--ensemble", action="store_true",
                        help="also score the mean of each network's fits of a recipe (all seeds)")
    parser.add_argument("--smoke-steps", type=int, help="a smoke test: every fit this many steps")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="names of RECIPES to run [all]")
    parser.add_argument("--flip-agreement", action="store_true", help="also score every fit with flip agreement")
    parser.add_argument("--closing", action="store_true", help="also score every fit's masks closed once and twice")
    parser.add_argument("--sweep", action="store_true", help="also score every fit at SWEEP_THRESHOLDS")
    parser.add_argument("--scales", default="", help="comma-separated input scales whose probabilities are "
                        "averaged [the weights' own scale]")
    parser.add_argument("--threshold", type=float, help="score every network at this threshold [each file's own]")
    args = parser.parse_args()
    if args.vote and not args.ensemble:
        sys.exit("bench_refiner: --vote: expected together with --ensemble (it votes among the fits --ensemble keeps), "
                 "got --vote alone")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        sys.exit(f"bench_refiner: --threshold: expected a probability in (0, 1), got {args.threshold}")
    try:
        scales = tuple(float(x) for x in args.scales.split(",") if x)
    except ValueError:
        sys.exit(f"bench_refiner: --scales: expected comma-separated numbers, got {args.scales!r}")
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train, val = SirstSplit.load(args.data_dir, "train", "idx_427"), SirstSplit.load(args.data_dir, "val", "idx_427")
    jobs = []
    recipes = args.recipes.split(",")
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        sys.exit(f"bench_refiner: --recipes: expected names of {sorted(RECIPES)}, got {unknown}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        seeds_of = {r: seeds for r in recipes}
        for spec in args.recipe_seeds:
            name, listed = spec.split("=", 1)
            if name not in recipes:
                sys.exit(f"bench_refiner: --recipe-seeds: expected one of --recipes {recipes}, got {name!r}")
            seeds_of[name] = [int(s) for s in listed.split(",")]
    except ValueError:
        sys.exit(f"bench_refiner: --seeds/--recipe-seeds: expected comma-separated integers, got {args.seeds!r}, "
                 f"{args.recipe_seeds}")
    for spec in args.network:
        name, weights = spec.split("=", 1)
        t0 = time.monotonic()
        fit_images, fit_probs, threshold = _probs(weights, train, args.device, scales=scales)
        threshold = threshold if args.threshold is None else args.threshold
        val_images, val_probs, _ = _probs(weights, val, args.device, scales=scales)
        line = {"network": name, "recipe": "none", **({"scales": list(scales)} if scales else {}),
                **_score_masks((prob > threshold for prob in val_probs), val.masks)}
        extra = {}
        if args.flip_agreement:
            flipped = [_probs(weights, val, args.device, axes, scales)[1] for axes in FLIP_AXES]
            line.update(_agreed_scores(val_probs, flipped, val.masks, threshold))
            extra["val_flip_probs"] = np.empty((len(FLIP_AXES), len(val_probs)), dtype=object)
            for k, answers in enumerate(flipped):
                extra["val_flip_probs"][k, :] = answers
        line["seconds_probs"] = round(time.monotonic() - t0, 1)
        print(json.dumps(line), flush=True)
        cache = work / f"{name}.npz"
        np.savez(cache, fit_images=np.array(fit_images, dtype=object), fit_probs=np.array(fit_probs, dtype=object),
                 fit_masks=np.array(train.masks, dtype=object), val_images=np.array(val_images, dtype=object),
                 val_probs=np.array(val_probs, dtype=object), val_masks=np.array(val.masks, dtype=object),
                 threshold=threshold, **extra)
        jobs += [{"cache": str(cache), "network": name, "recipe": r, "seed": s, "device": args.device,
                  "threads": args.threads_per_fit,
                  "steps": args.smoke_steps, "closing": (1, 2) if args.closing else (),
                  "sweep": SWEEP_THRESHOLDS if args.sweep else (),
                  "refined_out": str(work / f"{name}_{r}_seed{s}_refined.npy") if args.ensemble else None}
                 for r in recipes for s in seeds_of[r]]
    if args.refit:
        name, weights = args.refit.split("=", 1)
        split = SirstSplit.load(args.data_dir, args.refit_split, "idx_427")
        images, probs, threshold = _probs(weights, split, args.device, scales=scales)
        cache = work / f"{name}_{args.refit_split}.npz"
        np.savez(cache, fit_images=np.array(images, dtype=object), fit_probs=np.array(probs, dtype=object),
                 fit_masks=np.array(split.masks, dtype=object), threshold=threshold)
        Path(args.refit_dir).mkdir(parents=True, exist_ok=True)
        jobs += [{"cache": str(cache), "network": name, "recipe": r, "seed": s, "device": args.device,
                  "threads": args.threads_per_fit, "steps": args.smoke_steps,
                  "save": str(Path(args.refit_dir) / (f"{r}.safetensors" if s == 0 else f"{r}_seed{s}.safetensors"))}
                 for r in recipes for s in (int(x) for x in args.refit_seeds.split(","))]
    rows = []
    with open(args.out, "w") as out, ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for row in pool.map(_fit_and_score, jobs):
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
            rows.append(row)
        for recipe in recipes:
            scored = [r for r in rows if r["recipe"] == recipe and "iou" in r]
            if scored:
                summary = {"recipe": recipe, "fits": len(scored),
                           **{f"mean_{k}": round(float(np.mean([r[k] for r in scored])), 6)
                              for k in ("iou", "niou", "pd", "fa", "false_alarm_px")},
                           **{variant: {f"mean_{k}": round(float(np.mean([r[variant][k] for r in scored])), 6)
                                        for k in ("iou", "niou", "pd", "fa", "false_alarm_px")}
                              for variant in ("flip_agreement", "flip_majority", "close1", "close2")
                              if all(variant in r for r in scored)},
                           "min_pd_by_network": {n: min(r["pd"] for r in scored if r["network"] == n)
                                                 for n in sorted({r["network"] for r in scored})}}
                print(json.dumps(summary), flush=True)
                out.write(json.dumps(summary) + "\n")
        if args.ensemble:
            for row in _ensemble_rows(jobs, val.masks, vote=args.vote):
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
