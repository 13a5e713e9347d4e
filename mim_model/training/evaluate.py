"""Evaluate a weights file on a split of SIRST-layout data (IoU, nIoU, Pd, Fa)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from mim_model.training.data import DEFAULT_SPLIT_DIR, SirstSplit
from mim_model.training.flip_agreement import check_flip_options, predict_masks
from mim_model.training.inference import (
    check_inference_options,
    predict_probs,
    weights_input_scale,
    weights_threshold,
)
from mim_model.training.metrics import IRSTDMetrics

__all__ = ["evaluate"]

log = logging.getLogger(__name__)

def evaluate(
    data_dir: str | os.PathLike,
    split: str,
    *,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    threshold: float | None = None,
    split_dir: str = DEFAULT_SPLIT_DIR,
    batch_size: int = 8,
    amp: bool = True,
    flip_tta: bool = False,
    refine: bool = True,
    flip_agreement: bool = False,
) -> dict[str, Any]:
    """Run a model on every image of a split at native resolution and score it.

    Parameters
    ----------
    data_dir : path
        SIRST-layout data directory.
    split : str
        Split name (``test``, ``val``, ...) or a path to a split ``.txt`` file.
    weights : path, optional
        Safetensors weights; None loads the packaged default weights.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    threshold : float, optional
        Probability threshold; None uses the one stored with the weights (else 0.5).
    split_dir : str
        Folder of split files under ``data_dir``.
    batch_size : int
        Images per forward pass.
    amp : bool
        bf16 autocast on CUDA.
    flip_tta : bool
        Average over the image and its flips (four forward passes per image).
    refine : bool
        Apply the outline refiner the weights file carries, if any (:mod:`mim_model.refiner`).
    flip_agreement : bool
        Keep only detections that the image's three flips also find
        (:mod:`mim_model.training.flip_agreement`; four passes per image). Not with ``flip_tta``.

    Returns
    -------
    dict
        ``iou``, ``niou``, ``pd``, ``fa`` (fractions), the counts behind them,
        ``threshold``, ``split``, ``weights``, ``device`` and ``seconds``.

    Raises
    ------
    DatasetError
        Missing or empty split file, unreadable image, mask of another size.
    WeightsError
        Weights missing, unreadable or not matching the network.
    FlipAgreementError
        ``flip_agreement`` together with ``flip_tta``.
    InferenceOptionError
        A threshold outside (0, 1) or a ``batch_size`` < 1.
    TrainError
        A device that is not auto, cpu, cuda or cuda:N, or is not there.
    """
    from mim_model.training.train import resolve_device
    from mim_model.weights import DEFAULT_WEIGHTS_PATH, load_model, load_refiner

    check_flip_options(flip_tta=flip_tta, flip_agreement=flip_agreement)
    check_inference_options(threshold=threshold, batch_size=batch_size)
    t0 = time.monotonic()
    data = SirstSplit.load(data_dir, split, split_dir)
    dev = resolve_device(device)
    model = load_model(weights, device=dev)
    t = weights_threshold(model) if threshold is None else float(threshold)
    scale = weights_input_scale(model)
    refiner = load_refiner(weights, device=dev) if refine else None
    _, masks = predict_masks(
        lambda images: predict_probs(model, images, device=dev, amp=amp, batch_size=batch_size, scale=scale,
                                     flip_tta=flip_tta, refiner=refiner),
        data.images01(), t, flip_agreement=flip_agreement,
    )
    metrics = IRSTDMetrics()
    for predicted, mask in zip(masks, data.masks, strict=True):
        metrics.update(predicted, mask)
    result: dict[str, Any] = metrics.result()
    result.update(
        threshold=t,
        input_scale=scale,
        flip_tta=flip_tta,
        flip_agreement=flip_agreement,
        refiner=refiner is not None,
        split=split,
        weights=str(Path(weights) if weights is not None else DEFAULT_WEIGHTS_PATH),
        device=str(dev),
        seconds=round(time.monotonic() - t0, 3),
    )
    log.info("evaluated %s on %s/%s: iou %.4f niou %.4f pd %.4f fa %.3e", result["weights"], data_dir, split,
             result["iou"], result["niou"], result["pd"], result["fa"])
    return result
