"""Fit an :class:`~mim_model.refiner.OutlineRefiner` to a network's probabilities on a split.

The refiner learns to correct a *given* network's outlines, so it is fitted to that
network's own probabilities (at native resolution, as :func:`predict_probs` gives them)
on images with masks: the recipe judged in docs/benchmarks.md ("An outline refiner") fits
it on the split the network itself trained on.

Each step draws ``batch_size`` crops of ``crop_px`` squared: with probability
``near_target_share`` centred within ``near_radius_px`` of a random pixel that is a target
or that the network gives more than ``near_prob`` (outlines and false alarms are where the
corrections are), else anywhere; optionally the crop's input logit is redrawn with a random
slope and shift (``logit_slope_jitter``, ``logit_shift_jitter``: off in the packaged recipe);
each crop is turned by a random multiple of 90 degrees and
flipped left-right with probability one half. The loss is the batch-level SoftIoU of the
refined logits (or, with ``loss="tversky-fa"``, the Tversky loss charging false pixels
more); AdamW with a one-cycle schedule (``warmup_share`` of the steps rising to ``lr``, then
cosine annealing). The defaults are the recipe chosen on val (docs/benchmarks.md,
"Refiner recipes"): 6,000 steps of 32 crops, about 70 s on an H100 and half an hour to an hour
on one CPU thread (53-60 min each on a 2-core machine running two fits, 2026-12-07).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from mim_model.errors import MiMError
from mim_model.output_paths import check_output_file
from mim_model.refiner import (
    LOGIT_FEATURE_SCALE,
    OutlineRefiner,
    RefinerConfig,
    probability_features,
    refiner_features,
)
from mim_model.training.data import DEFAULT_SPLIT_DIR, SirstSplit
from mim_model.training.inference import check_inference_options, predict_probs, weights_input_scale
from mim_model.training.loss import make_loss

#: losses a refiner may be fitted with (:attr:`RefinerTrainConfig.loss`)
REFINER_LOSSES = ("softiou", "tversky-fa")

__all__ = ["RefinerError", "RefinerTrainConfig", "crop_centres", "fit_refiner", "refiner_crop", "train_refiner"]


class RefinerError(MiMError, ValueError):
    """A refiner cannot be trained or written as asked (message names the field)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefinerTrainConfig:
    """Recipe of :func:`fit_refiner` (module docstring); the defaults are the judged recipe."""

    steps: int = 6000
    batch_size: int = 32
    crop_px: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_share: float = 0.05
    near_target_share: float = 0.7
    near_radius_px: int = 24
    near_prob: float = 0.2
    #: Each crop's input logit is redrawn as ``a * logit + b`` with ``a`` uniform in
    #: [1 - logit_slope_jitter, 1 + logit_slope_jitter] and ``b`` uniform in
    #: [-logit_shift_jitter, logit_shift_jitter] (0 and 0: the network's own, as packaged).
    logit_slope_jitter: float = 0.0
    logit_shift_jitter: float = 0.0
    #: the fit's loss: ``softiou`` (as packaged) or ``tversky-fa`` (false pixels charged 7/3 of
    #: missed ones; :mod:`mim_model.training.loss`)
    loss: str = "softiou"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {  # name: (valid, what is expected)
            "steps": (self.steps >= 1, "an integer >= 1"), "batch_size": (self.batch_size >= 1, "an integer >= 1"),
            "crop_px": (self.crop_px >= 8, "at least 8 px"), "lr": (self.lr > 0, "a positive number"),
            "weight_decay": (self.weight_decay >= 0, "a number >= 0"),
            "warmup_share": (0 < self.warmup_share < 1, "a share in (0, 1)"),
            "near_target_share": (0 <= self.near_target_share <= 1, "a share in [0, 1]"),
            "near_radius_px": (self.near_radius_px >= 0, "an integer >= 0"),
            "near_prob": (0 < self.near_prob < 1, "a probability in (0, 1)"),
            "logit_slope_jitter": (0 <= self.logit_slope_jitter < 1, "a number in [0, 1)"),
            "logit_shift_jitter": (self.logit_shift_jitter >= 0, "a number >= 0"),
            "loss": (self.loss in REFINER_LOSSES, f"one of {', '.join(REFINER_LOSSES)}"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise RefinerError(f"refiner training {name}: expected {expected}, got {getattr(self, name)!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _padded_to(array: npt.NDArray, side_px: int) -> npt.NDArray:
    """Zero-pad the last two axes up to ``side_px`` where shorter (small images)."""
    h, w = array.shape[-2:]
    if h >= side_px and w >= side_px:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, max(0, side_px - h)), (0, max(0, side_px - w))]
    return np.pad(array, pad)


def crop_centres(features: npt.NDArray[np.float32], mask: npt.NDArray[np.float32],
                 cfg: RefinerTrainConfig) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(rows, cols) of the pixels a crop may be centred near: targets, and pixels the network
    gives more than ``cfg.near_prob``."""
    return np.nonzero((mask > 0) | (features[2] > cfg.near_prob))


def _jittered_logit(features: npt.NDArray[np.float32], slope: float, shift: float) -> npt.NDArray[np.float32]:
    """Features with the network's logit replaced by ``slope * logit + shift`` (both channels
    made from it as :func:`mim_model.refiner.refiner_features` makes them)."""
    logit = torch.from_numpy(np.ascontiguousarray(features[3])) * LOGIT_FEATURE_SCALE * slope + shift
    out = features.copy()
    out[2:4] = probability_features(torch.sigmoid(logit)[None, None])[0].numpy()
    return out


def refiner_crop(
    features: npt.NDArray[np.float32], mask: npt.NDArray[np.float32], cfg: RefinerTrainConfig, rng: np.random.Generator,
    centres: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """One training crop ((4, C, C) features, (C, C) mask) of an image's features and mask
    (``centres``: :func:`crop_centres` of them, computed once per image by the caller)."""
    crop = cfg.crop_px
    rows, cols = centres if centres is not None else crop_centres(features, mask, cfg)
    features, mask = _padded_to(features, crop), _padded_to(mask, crop)
    height, width = mask.shape
    if len(rows) and rng.random() < cfg.near_target_share:
        j = rng.integers(len(rows))
        r = cfg.near_radius_px
        cy, cx = rows[j] + rng.integers(-r, r + 1), cols[j] + rng.integers(-r, r + 1)
    else:
        cy, cx = rng.integers(height), rng.integers(width)
    y0 = int(np.clip(cy - crop // 2, 0, height - crop))
    x0 = int(np.clip(cx - crop // 2, 0, width - crop))
    f, m = features[:, y0 : y0 + crop, x0 : x0 + crop], mask[y0 : y0 + crop, x0 : x0 + crop]
    if cfg.logit_slope_jitter or cfg.logit_shift_jitter:
        f = _jittered_logit(f, 1.0 + rng.uniform(-cfg.logit_slope_jitter, cfg.logit_slope_jitter),
                            rng.uniform(-cfg.logit_shift_jitter, cfg.logit_shift_jitter))
    turns = int(rng.integers(4))
    f, m = np.rot90(f, turns, axes=(1, 2)), np.rot90(m, turns)
    if rng.random() < 0.5:
        f, m = f[:, :, ::-1], m[:, ::-1]
    return np.ascontiguousarray(f), np.ascontiguousarray(m)


def fit_refiner(
    images01: Sequence[npt.NDArray[np.floating]],
    probs: Sequence[npt.NDArray[np.floating]],
    masks: Sequence[npt.NDArray[np.bool_]],
    cfg: RefinerTrainConfig | None = None,
    config: RefinerConfig | None = None,
    device: torch.device | str = "cpu",
    log_every: int = 250,
) -> tuple[OutlineRefiner, list[dict[str, float]]]:
    """Fit a refiner to a network's probabilities ``probs`` of ``images01`` against ``masks``.

    Parameters
    ----------
    images01, probs, masks : sequences of (H, W) arrays, one per image, same sizes
        Grey images in [0, 1], the network's probabilities at native resolution, 0/1 masks.
    cfg : RefinerTrainConfig, optional
    config : RefinerConfig, optional
        The refiner's shape.
    device : torch.device or str
    log_every : int
        Steps between progress records.

    Returns
    -------
    (OutlineRefiner, list of dict)
        The fitted refiner (eval mode, on ``device``) and progress records (``step``,
        ``loss``: running mean of the loss, ``lr``, ``seconds``).
    """
    cfg = cfg or RefinerTrainConfig()
    if not (len(images01) == len(probs) == len(masks)) or not images01:
        raise RefinerError(f"images, probs, masks: expected as many of each (>= 1), got {len(images01)}, "
                         f"{len(probs)}, {len(masks)}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(device)
    refiner = OutlineRefiner(config).to(device)
    box = refiner.config.contrast_box_px
    features, targets = [], []
    for i, (img, prob, mask) in enumerate(zip(images01, probs, masks, strict=True)):
        if not (np.shape(img) == np.shape(prob) == np.shape(mask)) or np.ndim(img) != 2:
            raise RefinerError(f"image {i}: expected image, probability and mask of one (H, W) shape, got "
                             f"{np.shape(img)}, {np.shape(prob)}, {np.shape(mask)}")
        t_img = torch.from_numpy(np.asarray(img, dtype=np.float32))[None, None]
        t_prob = torch.from_numpy(np.asarray(prob, dtype=np.float32))[None, None]
        features.append(refiner_features(t_img, t_prob, box)[0].numpy())
        targets.append(np.asarray(mask, dtype=np.float32))
    centres = [crop_centres(f, t, cfg) for f, t in zip(features, targets, strict=True)]
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # OneCycleLR divides by (pct_start * steps - 1): a warm-up of exactly one step is nudged past it
    warmup_share = cfg.warmup_share * (1 + 1e-6) if float(cfg.warmup_share * cfg.steps) == 1.0 else cfg.warmup_share
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=cfg.steps, pct_start=warmup_share)
    loss_fn = make_loss(cfg.loss)
    refiner.train()
    records: list[dict[str, float]] = []
    running, start = 0.0, time.monotonic()
    for step in range(cfg.steps):
        crops = [refiner_crop(features[k], targets[k], cfg, rng, centres[k])
                 for k in rng.integers(len(features), size=cfg.batch_size)]
        x = torch.from_numpy(np.stack([c[0] for c in crops])).to(device)
        y = torch.from_numpy(np.stack([c[1] for c in crops]))[:, None].to(device)
        loss = loss_fn(refiner.forward_features(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            record = {"step": step + 1, "loss": round(running, 5), "lr": optimizer.param_groups[0]["lr"],
                      "seconds": round(time.monotonic() - start, 1)}
            records.append(record)
            log.info("refiner step %d/%d: loss %.4f, lr %.2e, %.0f s", step + 1, cfg.steps, running,
                     record["lr"], record["seconds"])
    return refiner.eval(), records


def train_refiner(
    data_dir: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    cfg: RefinerTrainConfig | None = None,
    split_dir: str = DEFAULT_SPLIT_DIR,
    device: str = "auto",
    batch_size: int = 8,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit a refiner to ``weights``' network on a split and write the network and the refiner
    together to ``out`` (float16 safetensors, the network's tensors and metadata unchanged).

    The network runs as :func:`~mim_model.training.evaluate.evaluate` runs it (its own input
    scale, no flips, without any refiner the file already carries); the refiner is fitted on
    ``device`` (a GPU takes about a minute, one CPU thread half an hour to an hour). Returns a
    summary: the split, the images, the recipe, the progress records and ``out``.

    Raises
    ------
    DatasetError
        Missing or empty split file, unreadable image, mask of another size.
    WeightsError
        Weights missing, unreadable or not matching the network.
    RefinerError
        ``out`` is the weights file itself, or exists and ``overwrite`` is off.
    """
    from mim_model.training.train import resolve_device
    from mim_model.weights import DEFAULT_WEIGHTS_PATH, load_model, save_safetensors, weights_sha256

    cfg = cfg or RefinerTrainConfig()
    source = Path(weights) if weights is not None else DEFAULT_WEIGHTS_PATH
    out = Path(out)
    if out.resolve() == source.resolve():
        raise RefinerError(f"out {out}: expected a new file, got the weights file itself")
    check_output_file(out, "out", RefinerError)  # a folder at ``out`` is named as one, before the next check
    if out.exists() and not overwrite:
        raise RefinerError(f"out {out}: expected a path that does not exist yet (or --overwrite), got an existing file")
    check_inference_options(threshold=None, batch_size=batch_size, error=RefinerError)
    data = SirstSplit.load(data_dir, split, split_dir)
    dev = resolve_device(device)
    model = load_model(source, device=dev)
    images = data.images01()
    t0 = time.monotonic()
    probs = predict_probs(model, images, device=dev, amp=False, batch_size=batch_size, scale=weights_input_scale(model))
    log.info("network probabilities of %d %s images in %.0f s", len(images), split, time.monotonic() - t0)
    refiner, records = fit_refiner(images, probs, data.masks, cfg, device=dev)
    metadata = dict(model.weights_metadata)  # the source file's, as load_model read it
    provenance = {"data": Path(data_dir).name, "split": split, "split_dir": split_dir, "images": len(images),
                  "network_sha256": weights_sha256(source), "recipe": asdict(cfg), "progress": records}
    metadata["refiner_train"] = json.dumps(provenance, sort_keys=True)
    save_safetensors(model.cpu(), out, metadata=metadata, refiner=refiner.cpu())
    return {"out": str(out), **provenance}
