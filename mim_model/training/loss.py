"""Losses for training MiM-ISTD.

``softiou`` is the ACM / DNANet SoftIoU (spec section 4), batch-level: the sums run over
the whole batch tensor, not per image::

    p = sigmoid(logits)
    loss = 1 - (sum(p*y) + 1) / (sum(p) + sum(y) - sum(p*y) + 1)

``softiou+bce`` adds ``bce_weight`` times the mean binary cross-entropy on the logits. It
is kept as an option: in H100 trials it made the network start finding targets much
later than SoftIoU alone (BCE first drives every pixel towards background), so the
default is ``softiou``.

``tversky`` is the Tversky loss (Salehi et al., 2017), batch-level like SoftIoU, with
``TP = sum(p*y)``, ``FP = sum(p) - TP``, ``FN = sum(y) - TP``::

    loss = 1 - (TP + 1) / (TP + alpha * FP + beta * FN + 1)

at the paper's alpha 0.3, beta 0.7: a missed target pixel costs more than a false one, which
trades false alarms for recall. SoftIoU is the case alpha = beta = 1. ``tversky-fa`` turns
it the other way at SoftIoU's total weight, alpha 1.4, beta 0.6: a false pixel costs 7/3 of a
missed one (runs 41-42 in docs/benchmarks.md).

``softiou-image`` is SoftIoU per image (crop), averaged over the batch: every crop weighs
the same whatever the size of its targets, as in nIoU (the batch-level form lets the
largest targets dominate). A crop without targets scores ``1 / (sum(p) + 1)``: it is
pushed to predict nothing.

``sls`` is a scale- and location-sensitive loss after Liu et al., "Infrared Small Target
Detection with Scale and Location Sensitivity" (CVPR 2024; MSHNet). Per image with
``I = sum(p*y)``, ``P = sum(p)``, ``G = sum(y)``::

    iou   = (I + 1) / (P + G - I + 1)
    d     = ((P - G) / 2) ** 2
    alpha = (min(P, G) + d) / (max(P, G) + d)       # 1 for a crop without targets
    scale = 1 - mean(alpha * iou)
    loc   = mean over crops of (0 for a crop without targets)
            1 - min(r_p, r_g) / max(r_p, r_g) + 4 / pi**2 * (theta_p - theta_g) ** 2

where ``(r, theta)`` are the polar coordinates of the centroid of ``p`` (of ``y``) in
coordinates normalised to [0, 1) by the crop's width and height; the loss is
``scale + loc``. Differences from the paper's code, ours: centroids are divided by the
mass (its code takes ``mean(x * p)``, which also grows with the mass), ``alpha`` is 1 for
a crop without targets (in the paper's form the loss would then fall as the prediction
grows: false alarms would be rewarded), and there is no warm-up epoch of plain IoU.

The per-image losses need no sums over processes in data-parallel training: each process
averages over its equal share of the crops, and the averaging of gradients gives the mean
over the whole batch. All losses are computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["soft_iou_loss", "soft_tversky_loss", "per_image_soft_iou_loss", "sls_loss", "make_loss", "LOSSES"]

LOSSES = ("softiou", "softiou+bce", "softiou-image", "sls", "tversky", "tversky-fa")

TVERSKY_FP_WEIGHT = 0.3
TVERSKY_FN_WEIGHT = 0.7
#: ``tversky-fa``: false pixels charged 7/3 of missed ones, weights summing to SoftIoU's 2.
TVERSKY_FA_FP_WEIGHT = 1.4
TVERSKY_FA_FN_WEIGHT = 0.6


SumReducer = Callable[[torch.Tensor], torch.Tensor]


def soft_iou_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, reduce_sums: SumReducer | None = None
) -> torch.Tensor:
    """Batch-level SoftIoU loss: :func:`soft_tversky_loss` with both weights 1.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, 1, H, W)
        Network output (before the sigmoid).
    target : torch.Tensor, shape (B, 1, H, W)
        0/1 mask.
    smooth : float
        Added to numerator and denominator.
    reduce_sums : callable, optional
        Applied to the stacked sums ``[sum(p*y), sum(p), sum(y)]`` before the ratio. For
        data-parallel training, a differentiable all-reduce (:mod:`mim_model.training.distributed`)
        makes the sums run over the whole batch of all processes.

    Returns
    -------
    torch.Tensor, scalar float32
    """
    return soft_tversky_loss(logits, target, 1.0, 1.0, smooth, reduce_sums)


def soft_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    fp_weight: float = TVERSKY_FP_WEIGHT,
    fn_weight: float = TVERSKY_FN_WEIGHT,
    smooth: float = 1.0,
    reduce_sums: SumReducer | None = None,
) -> torch.Tensor:
    """Batch-level Tversky loss ``1 - (TP + s) / (TP + fp_weight * FP + fn_weight * FN + s)``
    (module docstring); arguments as :func:`soft_iou_loss`."""
    p = torch.sigmoid(logits.float())
    y = target.float()
    sums = torch.stack([(p * y).sum(), p.sum(), y.sum()])
    if reduce_sums is not None:
        sums = reduce_sums(sums)
    true_pos, pred, true = sums[0], sums[1], sums[2]
    false_pos, false_neg = pred - true_pos, true - true_pos
    return 1.0 - (true_pos + smooth) / (true_pos + fp_weight * false_pos + fn_weight * false_neg + smooth)


def _per_image_iou(logits: torch.Tensor, target: torch.Tensor, smooth: float) -> tuple[torch.Tensor, ...]:
    """``p``, ``y`` (float32), each image's soft IoU ``(I + smooth) / (P + G - I + smooth)``,
    and its ``P = sum(p)`` and ``G = sum(y)``."""
    p = torch.sigmoid(logits.float())
    y = target.float()
    inter, pred, true = (p * y).sum(dim=(1, 2, 3)), p.sum(dim=(1, 2, 3)), y.sum(dim=(1, 2, 3))
    return p, y, (inter + smooth) / (pred + true - inter + smooth), pred, true


def per_image_soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """SoftIoU per image, ``1 - mean((I + smooth) / (P + G - I + smooth))`` (module docstring).

    Parameters
    ----------
    logits, target : torch.Tensor, shape (B, 1, H, W)
        Network output (before the sigmoid) and 0/1 mask.
    smooth : float
        Added to numerator and denominator.

    Returns
    -------
    torch.Tensor, scalar float32
    """
    return 1.0 - _per_image_iou(logits, target, smooth)[2].mean()


def _polar_centroid(weights: torch.Tensor, mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radius and angle of the centroid of ``weights`` (B, 1, H, W) in [0, 1) coordinates."""
    _, _, h, w = weights.shape
    ys = torch.arange(h, dtype=weights.dtype, device=weights.device).view(1, 1, h, 1) / h
    xs = torch.arange(w, dtype=weights.dtype, device=weights.device).view(1, 1, 1, w) / w
    mass = mass.clamp_min(1e-6)
    cx = (weights * xs).sum(dim=(1, 2, 3)) / mass
    cy = (weights * ys).sum(dim=(1, 2, 3)) / mass
    return torch.sqrt(cx * cx + cy * cy + 1e-12), torch.atan2(cy, cx)


def sls_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Scale- and location-sensitive loss (module docstring), float32.

    Parameters
    ----------
    logits, target : torch.Tensor, shape (B, 1, H, W)
        Network output (before the sigmoid) and 0/1 mask.
    smooth : float
        Added to numerator and denominator of each image's IoU.

    Returns
    -------
    torch.Tensor, scalar float32
    """
    p, y, iou, pred, true = _per_image_iou(logits, target, smooth)
    spread = ((pred - true) / 2) ** 2
    alpha = (torch.minimum(pred, true) + spread) / (torch.maximum(pred, true) + spread)
    has_target = true > 0
    alpha = torch.where(has_target, alpha, torch.ones_like(alpha))
    r_pred, theta_pred = _polar_centroid(p, pred)
    r_true, theta_true = _polar_centroid(y, true)
    location = (1.0 - torch.minimum(r_pred, r_true) / torch.maximum(r_pred, r_true)
                + 4.0 / torch.pi**2 * (theta_pred - theta_true) ** 2)
    # a plain mean over all crops (not over those with targets): a share of the batch then
    # gives 1 / shares of the whole batch's gradient, as data-parallel training needs
    location = torch.where(has_target, location, torch.zeros_like(location))
    return 1.0 - (alpha * iou).mean() + location.mean()


def make_loss(
    name: str, bce_weight: float = 0.5, reduce_sums: SumReducer | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function called ``name`` (one of :data:`LOSSES`); ``reduce_sums`` as in
    :func:`soft_iou_loss` (the BCE term and the per-image losses are per-process means:
    data-parallel training averages their gradients, which gives the mean over the whole
    batch).

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name == "softiou":

        def softiou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return soft_iou_loss(logits, target, reduce_sums=reduce_sums)

        return softiou
    if name == "softiou+bce":

        def softiou_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
            return soft_iou_loss(logits, target, reduce_sums=reduce_sums) + bce_weight * bce

        return softiou_bce
    if name == "softiou-image":
        return per_image_soft_iou_loss
    if name == "sls":
        return sls_loss
    if name == "tversky":

        def tversky(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return soft_tversky_loss(logits, target, reduce_sums=reduce_sums)

        return tversky
    if name == "tversky-fa":

        def tversky_fa(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return soft_tversky_loss(logits, target, TVERSKY_FA_FP_WEIGHT, TVERSKY_FA_FN_WEIGHT,
                                     reduce_sums=reduce_sums)

        return tversky_fa
    raise ValueError(f"loss: expected one of {LOSSES}, got {name!r}")
