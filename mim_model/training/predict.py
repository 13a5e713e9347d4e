"""Predict target masks for image files of any size.

For each input ``<dir>/<stem>.<ext>`` it writes ``out_dir/<stem>.png``: an 8-bit mask of
the input's size, 255 where the target probability exceeds the threshold stored with the
weights (else 0.5), 0 elsewhere. With ``prob=True`` it also writes
``out_dir/<stem>_prob.tif``: the float32 probabilities (one band, PIL mode ``F``), full
precision so that any other threshold can be applied later.

Images are resized by the weights' ``input_scale``, zero-padded to a square multiple of 64,
and the probabilities are cropped and resized back; images whose longer side (after
resizing) exceeds ``max_side_px`` (default 1024) are tiled (512 px tiles, 64 px halo), so
memory stays bounded for any size (see :mod:`mim_model.training.inference`). When the
weights file carries an outline refiner (:mod:`mim_model.refiner`), it is applied to the
probabilities at the input's size unless ``refine=False``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mim_model.output_paths import make_output_dir
from mim_model.training.data import DatasetError, load_grey01
from mim_model.training.flip_agreement import check_flip_options, predict_masks
from mim_model.training.inference import (
    check_inference_options,
    predict_probs,
    weights_input_scale,
    weights_threshold,
)

__all__ = ["predict"]

log = logging.getLogger(__name__)


def _check_inputs(paths: Sequence[Path]) -> None:
    if not paths:
        raise DatasetError("images: expected at least one image path, got none")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            raise DatasetError(f"image {path}: expected an image file, got a folder (pass its images: {path}/*.png)")
        if not path.is_file():
            raise DatasetError(f"image {path}: expected an image file, got none there")
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018  (reads the header only)
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"image {path}: expected an image PIL can read, got {type(err).__name__}: {err}") from err
        if path.stem in stems:
            raise DatasetError(
                f"image {path}: expected distinct file stems (outputs are named <stem>.png), "
                f"got the same stem as {stems[path.stem]}"
            )
        stems[path.stem] = path


def predict(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    prob: bool = False,
    device: str = "auto",
    threshold: float | None = None,
    batch_size: int = 4,
    max_side_px: int = 1024,
    amp: bool = True,
    flip_tta: bool = False,
    refine: bool = True,
    flip_agreement: bool = False,
) -> list[dict[str, Any]]:
    """Write a 0/255 mask (and optionally probabilities) for each image.

    Parameters
    ----------
    paths : sequence of path
        Input images (any format and mode PIL reads; loaded as grey).
    out_dir : path
        Output folder (created).
    weights : path, optional
        Safetensors weights; None loads the packaged default weights.
    prob : bool
        Also write ``<stem>_prob.tif`` float32 probabilities.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    threshold : float, optional
        Probability threshold; None uses the weights' own (else 0.5).
    batch_size : int
        Images per forward pass.
    max_side_px : int
        Longer sides above this are tiled.
    amp : bool
        bf16 autocast on CUDA.
    flip_tta : bool
        Average over the image and its flips (four forward passes per image).
    refine : bool
        Apply the outline refiner the weights file carries, if any (:mod:`mim_model.refiner`).
    flip_agreement : bool
        Keep only detections that the image's three flips also find
        (:mod:`mim_model.training.flip_agreement`; four passes per image). Not with ``flip_tta``.
        The probabilities written with ``prob`` are the plain pass's.

    Returns
    -------
    list of dict
        Per image: ``image``, ``mask``, ``prob`` (path or None), ``height``, ``width``,
        ``target_px``.

    Raises
    ------
    DatasetError
        No inputs, a missing or unreadable image, two inputs with the same stem.
    WeightsError
        Weights missing, unreadable or not matching the network.
    FlipAgreementError
        ``flip_agreement`` together with ``flip_tta``.
    InferenceOptionError
        A threshold outside (0, 1) or a ``batch_size`` < 1.
    OutputPathError
        A file where the output folder should be, or above it.
    TrainError
        A device that is not auto, cpu, cuda or cuda:N, or is not there.
    """
    from mim_model.training.train import resolve_device
    from mim_model.weights import load_model, load_refiner

    check_flip_options(flip_tta=flip_tta, flip_agreement=flip_agreement)
    check_inference_options(threshold=threshold, batch_size=batch_size)
    inputs = [Path(p) for p in paths]
    _check_inputs(inputs)
    dev = resolve_device(device)
    out = make_output_dir(out_dir, "output folder")
    model = load_model(weights, device=dev)
    t = weights_threshold(model) if threshold is None else float(threshold)
    scale = weights_input_scale(model)
    refiner = load_refiner(weights, device=dev) if refine else None
    results = []
    chunk = max(1, batch_size) * 4
    for start in range(0, len(inputs), chunk):
        group = inputs[start : start + chunk]
        images = [load_grey01(p) for p in group]
        probs, masks = predict_masks(
            lambda batch: predict_probs(model, batch, device=dev, amp=amp, batch_size=batch_size, max_side_px=max_side_px,
                                        scale=scale, flip_tta=flip_tta, refiner=refiner),
            images, t, flip_agreement=flip_agreement,
        )
        for path, p, detected in zip(group, probs, masks, strict=True):
            mask = np.where(detected, 255, 0).astype(np.uint8)
            mask_path = out / f"{path.stem}.png"
            Image.fromarray(mask).save(mask_path)
            prob_path = None
            if prob:
                prob_path = out / f"{path.stem}_prob.tif"
                Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)).save(prob_path)
            results.append(
                {
                    "image": str(path),
                    "mask": str(mask_path),
                    "prob": str(prob_path) if prob_path else None,
                    "height": int(p.shape[0]),
                    "width": int(p.shape[1]),
                    "target_px": int((mask > 0).sum()),
                }
            )
            log.info("%s -> %s (%d target px)", path, mask_path, results[-1]["target_px"])
    return results
