"""The refiner gated by the network's own objects, scored on SIRST val (docs/benchmarks.md,
"The refiner gated by the network's own objects").

    python bench/bench_refiner_gate.py DATA_DIR --weights r61=W1 --weights r62=W2 \
        [--split val] [--gate 0.5,0.2] [--threshold T] [--device cpu] [--out RESULTS.jsonl]

Each W is a weights file with a refiner beside the network (``irscan train-refiner``). For
each, the network's probabilities on the split are computed once (fp32, its input scale, no
flips) and refined; the masks at the weights' threshold (or ``--threshold``) are scored
(IoU, nIoU, Pd, Fa): the network alone, refined, and refined then gated at each ``--gate`` g
(:func:`gate_mask`: only the refined objects holding a pixel where the network alone exceeds
g are kept). One JSON line per network and mask, then ``refined_fa_px_new``: how many of the
refined mask's false-alarm px lie in objects that hold no pixel of the network alone's mask.
Not adopted (the rule's verdict is in docs/benchmarks.md), so it lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mim_model.refiner import refine_probs  # noqa: E402
from mim_model.training.data import SirstSplit  # noqa: E402
from mim_model.training.inference import predict_probs, weights_input_scale, weights_threshold  # noqa: E402
from mim_model.training.metrics import IRSTDMetrics, unmatched_components  # noqa: E402
from mim_model.weights import load_model, load_refiner  # noqa: E402

#: 8-connectivity, as the metrics count objects
EIGHT = np.ones((3, 3), dtype=bool)


def gate_mask(refined: np.ndarray, network_prob: np.ndarray, gate: float) -> np.ndarray:
    """The objects (8-connected) of the boolean ``refined`` mask that hold at least one pixel
    where ``network_prob`` exceeds ``gate``."""
    labels, count = ndimage.label(refined, structure=EIGHT)
    if count == 0:
        return refined.copy()
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[refined & (network_prob > gate)])] = True
    keep[0] = False
    return keep[labels]


def _scores(metrics: IRSTDMetrics) -> dict:
    scores = metrics.result()
    return {**{k: round(float(scores[k]), 6) for k in ("iou", "niou", "pd", "fa")},
            "found": int(scores["n_matched"]),
            "false_alarm_px": int(scores["false_alarm_px"])}


def score_network(name: str, weights: str, split: SirstSplit, gates: list[float], device: str,
                  threshold: float | None = None) -> list[dict]:
    """Rows for one weights file (network + refiner): alone, refined, refined and gated, at
    ``threshold`` (default: the weights')."""
    model = load_model(weights, device=device)
    refiner = load_refiner(weights, device=device)
    if refiner is None:
        raise SystemExit(f"{weights}: expected a weights file with a refiner, found the network alone")
    threshold = weights_threshold(model) if threshold is None else threshold
    images = split.images01()
    probs = predict_probs(model, images, device=device, amp=False, batch_size=8, scale=weights_input_scale(model))
    refined = [refine_probs(refiner, img, p) > threshold for img, p in zip(images, probs, strict=True)]
    alone = [p > threshold for p in probs]
    masks: dict[str, list[np.ndarray]] = {"alone": alone, "refined": refined}
    for g in gates:
        masks[f"gated@{g:g}"] = [gate_mask(r, p, g) for r, p in zip(refined, probs, strict=True)]
    rows = []
    for kind, predicted in masks.items():
        metrics = IRSTDMetrics()
        for pred, truth in zip(predicted, split.masks, strict=True):
            metrics.update(pred, truth)
        rows.append({"network": name, "mask": kind, "threshold": threshold, **_scores(metrics)})
    new_px = 0
    for pred, net, truth in zip(refined, alone, split.masks, strict=True):
        found = unmatched_components(pred, truth)
        touched = set(np.unique(found.labels[net]).tolist())  # labels k + 1 the network's mask reaches
        new_px += sum(int(found.areas_px[k]) for k in found.components if k + 1 not in touched)
    rows.append({"network": name, "refined_fa_px_new": new_px})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--weights", action="append", required=True, help="NAME=PATH (network + refiner)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--gate", default="0.5,0.2", help="comma-separated network probabilities")
    parser.add_argument("--threshold", type=float, help="default: each weights file's own")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    split = SirstSplit.load(args.data_dir, args.split)
    gates = [float(g) for g in args.gate.split(",")]
    out = args.out.open("w") if args.out else None
    for spec in args.weights:
        name, _, path = spec.partition("=")
        for row in score_network(name, path, split, gates, args.device, args.threshold):
            line = json.dumps(row)
            sys.stdout.write(line + "\n")
            if out:
                out.write(line + "\n")
    if out:
        out.close()


if __name__ == "__main__":
    main()
