"""A refiner fitted also to networks' answers on images they never saw (docs/benchmarks.md,
"Refiner recipes, fifth round").

The packaged refiner is fitted to a network's probabilities on the images that network
trained on, where it makes almost no false alarms; on unseen images it does, and the
refiner has never seen one. Here the fit also takes the answers of a *pool* of networks
trained on ``train`` only, on ``val`` images, scored by cross-fitting: val is cut in two
halves by position in the split file (even positions A, odd B); the refiner fitted with
half A's answers is scored on half B and the other way round, and the two halves' counts
make one val score. The control is the packaged recipe fitted to the base network's train
answers alone, scored on the whole of val.

Two steps, so that the GPU call needs no network weights:

    python bench/bench_refiner_unseen.py logits DATA_DIR SPLIT DIR NAME=WEIGHTS ...
        # each network's probabilities on SPLIT (its input scale, fp32, no flips), stored as
        # float16 logits clipped to +-12 in DIR/<SPLIT>_<NAME>.npz (a few hundred kB; the
        # refiner clips its logit at +-9.2, so nothing it reads is lost)
    python bench/bench_refiner_unseen.py fit DATA_DIR DIR --bases run3,run36 --pool run3,...
        --seeds 0,1 --device cuda --workers 8 --out RESULTS.jsonl
        [--refit run8 --refit-split trainval --refit-dir OUT]
        # with --refit, the candidate is also fitted (seed 0) to DIR/<refit-split>_run8.npz
        # plus every pool network's whole-val answers, and saved as OUT/steps4x_unseen.safetensors

Nothing is scored on test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mim_model.refiner import refine_probs  # noqa: E402
from mim_model.training.data import SirstSplit  # noqa: E402
from mim_model.training.metrics import IRSTDMetrics  # noqa: E402
from mim_model.training.refine import RefinerTrainConfig, fit_refiner  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from bench_refiner import _scores as bench_refiner_scores  # noqa: E402

SPLIT_DIR = "idx_427"
LOGIT_CLIP = 12.0
#: The recipe of both arms: the packaged one (RefinerTrainConfig's defaults, 6,000 steps).
RECIPE = "steps4x"
THRESHOLD = 0.5


def write_logits(data_dir: str, split_name: str, out_dir: Path, networks: list[str]) -> None:
    from mim_model.training.inference import predict_probs, weights_input_scale
    from mim_model.weights import load_model

    split = SirstSplit.load(data_dir, split_name, SPLIT_DIR)
    images = split.images01()
    out_dir.mkdir(parents=True, exist_ok=True)
    for spec in networks:
        name, weights = spec.split("=", 1)
        t0 = time.monotonic()
        model = load_model(weights, device="cpu")
        probs = predict_probs(model, images, device="cpu", amp=False, batch_size=4, scale=weights_input_scale(model))
        logits = {f"l{i}": np.clip(np.log(np.clip(p, 1e-7, 1)) - np.log(np.clip(1 - p, 1e-7, 1)),
                                   -LOGIT_CLIP, LOGIT_CLIP).astype(np.float16) for i, p in enumerate(probs)}
        np.savez_compressed(out_dir / f"{split_name}_{name}.npz", ids=np.array(split.ids), **logits)
        logging.warning("%s %s: %.0f s", split_name, name, time.monotonic() - t0)


def read_probs(logit_dir: Path, split: SirstSplit, split_name: str, name: str) -> list[np.ndarray]:
    """A network's probabilities on ``split`` from its stored logits (ids checked)."""
    stored = np.load(logit_dir / f"{split_name}_{name}.npz")
    if tuple(stored["ids"]) != split.ids:
        sys.exit(f"bench_refiner_unseen: {split_name}_{name}.npz: expected the ids of split {split_name}, got others")
    return [(1.0 / (1.0 + np.exp(-stored[f"l{i}"].astype(np.float32)))) for i in range(len(split.ids))]


def _scores(metrics: IRSTDMetrics) -> dict:
    return {**bench_refiner_scores(metrics), "n_matched": int(metrics.result()["n_matched"])}


def _fit(images, probs, masks, seed: int, device: str, steps: int | None):
    cfg = replace(RefinerTrainConfig(), seed=seed, **({"steps": steps} if steps else {}))
    refiner, records = fit_refiner(images, probs, masks, cfg, device=device, log_every=cfg.steps)
    return refiner, records[-1]["loss"], cfg


def _job(job: dict) -> dict:
    """One (base, arm, seed): fit(s) and the whole-val score (or a saved refit)."""
    torch.set_num_threads(2)
    logit_dir = Path(job["logit_dir"])
    train = SirstSplit.load(job["data_dir"], "train", SPLIT_DIR)
    val = SirstSplit.load(job["data_dir"], "val", SPLIT_DIR)
    val_images = val.images01()
    t0 = time.monotonic()
    result = {k: job[k] for k in ("base", "arm", "seed")}
    if job["arm"] == "refit":
        split = SirstSplit.load(job["data_dir"], job["refit_split"], SPLIT_DIR)
        images, masks = split.images01(), list(split.masks)
        probs = read_probs(logit_dir, split, job["refit_split"], job["base"])
        for name in job["pool"]:
            images += val_images
            probs += read_probs(logit_dir, val, "val", name)
            masks += list(val.masks)
        refiner, loss, cfg = _fit(images, probs, masks, job["seed"], job["device"], job["steps"])
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().half().contiguous() for k, v in refiner.state_dict().items()}, job["save"],
                  metadata={"refiner_config": refiner.config.to_json(),
                            "refiner_train": json.dumps({"recipe": cfg.to_json(), "base": job["base"],
                                                         "split": job["refit_split"], "unseen_pool": job["pool"]})})
        result.update(fit_images=len(images), final_loss=loss, saved=job["save"],
                      seconds=round(time.monotonic() - t0, 1))
        return result
    train_images, train_probs = train.images01(), read_probs(logit_dir, train, "train", job["base"])
    base_val = read_probs(logit_dir, val, "val", job["base"])
    pool_val = {name: read_probs(logit_dir, val, "val", name) for name in job["pool"]}
    halves = [list(range(0, len(val.ids), 2)), list(range(1, len(val.ids), 2))]
    metrics = IRSTDMetrics()
    losses = []
    if job["arm"] == "control":
        refiner, loss, _ = _fit(train_images, train_probs, list(train.masks), job["seed"], job["device"], job["steps"])
        losses.append(loss)
        for img, prob, mask in zip(val_images, base_val, val.masks, strict=True):
            metrics.update(refine_probs(refiner, img, prob) > THRESHOLD, mask)
    else:
        for fit_half, score_half in ((halves[0], halves[1]), (halves[1], halves[0])):
            images, probs, masks = list(train_images), list(train_probs), list(train.masks)
            for name in job["pool"]:
                images += [val_images[i] for i in fit_half]
                probs += [pool_val[name][i] for i in fit_half]
                masks += [val.masks[i] for i in fit_half]
            refiner, loss, _ = _fit(images, probs, masks, job["seed"], job["device"], job["steps"])
            losses.append(loss)
            for i in score_half:
                metrics.update(refine_probs(refiner, val_images[i], base_val[i]) > THRESHOLD, val.masks[i])
    result.update(_scores(metrics), final_loss=[round(x, 5) for x in losses], seconds=round(time.monotonic() - t0, 1))
    return result


def _network_alone(data_dir: str, logit_dir: Path, base: str) -> dict:
    val = SirstSplit.load(data_dir, "val", SPLIT_DIR)
    metrics = IRSTDMetrics()
    for prob, mask in zip(read_probs(logit_dir, val, "val", base), val.masks, strict=True):
        metrics.update(prob > THRESHOLD, mask)
    return {"base": base, "arm": "network alone", **_scores(metrics)}


def _summary(rows: list[dict], arm: str) -> dict:
    scored = [r for r in rows if r["arm"] == arm]
    return {"arm": arm, "fits": len(scored),
            **{f"mean_{k}": round(float(np.mean([r[k] for r in scored])), 6)
               for k in ("iou", "niou", "pd", "fa", "false_alarm_px")},
            "min_matched_by_base": {b: min(r["n_matched"] for r in scored if r["base"] == b)
                                    for b in sorted({r["base"] for r in scored})}}


def fit_main(args: argparse.Namespace) -> None:
    logit_dir = Path(args.logit_dir)
    bases, pool = args.bases.split(","), args.pool.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    common = {"data_dir": args.data_dir, "logit_dir": str(logit_dir), "pool": pool, "device": args.device,
              "steps": args.smoke_steps}
    jobs = [{**common, "base": b, "arm": arm, "seed": s} for arm in ("unseen", "control") for b in bases for s in seeds]
    if args.refit:
        Path(args.refit_dir).mkdir(parents=True, exist_ok=True)
        jobs.insert(0, {**common, "base": args.refit, "arm": "refit", "seed": 0, "refit_split": args.refit_split,
                        "save": str(Path(args.refit_dir) / f"{RECIPE}_unseen.safetensors")})
    rows = []
    with open(args.out, "w") as out:
        for base in bases:
            line = _network_alone(args.data_dir, logit_dir, base)
            print(json.dumps(line), flush=True)
            out.write(json.dumps(line) + "\n")
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool_exec:
            for row in pool_exec.map(_job, jobs):
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                rows.append(row)
        for arm in ("control", "unseen"):
            summary = _summary(rows, arm)
            print(json.dumps(summary), flush=True)
            out.write(json.dumps(summary) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    logits = sub.add_parser("logits", help="store networks' probabilities on a split as float16 logits")
    logits.add_argument("data_dir")
    logits.add_argument("split")
    logits.add_argument("logit_dir")
    logits.add_argument("networks", nargs="+", metavar="NAME=WEIGHTS")
    fit = sub.add_parser("fit", help="cross-fitted comparison on val (and the refit)")
    fit.add_argument("data_dir")
    fit.add_argument("logit_dir")
    fit.add_argument("--bases", required=True, help="networks whose refiners are compared (trained on train only)")
    fit.add_argument("--pool", required=True, help="networks (train only) whose val answers the candidate also fits")
    fit.add_argument("--seeds", default="0,1")
    fit.add_argument("--device", default="cuda")
    fit.add_argument("--workers", type=int, default=8)
    fit.add_argument("--out", required=True)
    fit.add_argument("--refit", metavar="NAME", help="also fit the candidate to NAME's answers on --refit-split")
    fit.add_argument("--refit-split", default="trainval")
    fit.add_argument("--refit-dir")
    fit.add_argument("--smoke-steps", type=int, help="a smoke test: every fit this many steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.command == "logits":
        write_logits(args.data_dir, args.split, Path(args.logit_dir), args.networks)
    else:
        fit_main(args)


if __name__ == "__main__":
    main()
