"""The one normalisation MiM-ISTD is trained and run with (spec section 1).

Grey pixels scaled to [0, 1] are replicated to 3 channels and normalised with the ImageNet
statistics, as ACM-style loaders do. Training, evaluation, prediction and the scan
pipeline all call :func:`to_model_input`, so the network sees the same numbers everywhere.
Padding is applied to the [0, 1] grey image **before** this function (zero = black).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from mim_model.errors import InputShapeError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NORMALISATION", "STRETCH_PCT", "to_model_input", "grey_uint8_to_01"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Percentiles that stretch a satellite band onto [0, 1] (pipeline.normalize's default
#: percentile mode); the synthetic training backgrounds are stretched the same way.
STRETCH_PCT = (0.5, 99.99)

#: Recorded in the weights' metadata so a reader knows what the network expects.
NORMALISATION = "grey/255 replicated to 3 channels, ImageNet mean (0.485,0.456,0.406) std (0.229,0.224,0.225)"


def to_model_input(grey01: torch.Tensor) -> torch.Tensor:
    """Turn grey images in [0, 1] into the network's normalised 3-channel input.

    Parameters
    ----------
    grey01 : torch.Tensor, float, shape (B, 1, H, W)
        Grey images scaled to [0, 1] (8-bit pixel / 255), any device.

    Returns
    -------
    torch.Tensor, shape (B, 3, H, W), same dtype and device
        ``(grey01 - mean[c]) / std[c]`` for the ImageNet channel statistics.

    Raises
    ------
    InputShapeError
        If the tensor is not (B, 1, H, W).
    """
    if grey01.dim() != 4 or grey01.shape[1] != 1:
        raise InputShapeError(f"grey01: expected shape (B, 1, H, W), got {tuple(grey01.shape)}")
    if not grey01.is_floating_point():
        raise InputShapeError(f"grey01: expected a float tensor in [0, 1], got dtype {grey01.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=grey01.dtype, device=grey01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=grey01.dtype, device=grey01.device).view(1, 3, 1, 1)
    return (grey01 - mean) / std


def grey_uint8_to_01(grey: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """8-bit grey (H, W) -> float32 (H, W) in [0, 1]."""
    return np.asarray(grey, dtype=np.float32) / 255.0
