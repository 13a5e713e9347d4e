"""Losses for training MiM-ISTD.

``softiou`` is the ACM / DNANet SoftIoU (spec section 4), batch-level: the sums run over
the whole batch tensor, not per image::

    p = sigmoid(logits)
    loss = 1 - (sum(p*y) + 1) / (sum(p) + sum(y) - sum(p*y) + 1)

``softiou+bce`` adds ``bce_weight`` times the mean binary cross-entropy on the logits. It
is kept as an option: in H100 trials it made the network start finding targets much
later than SoftIoU alone (BCE first drives every pixel towards background), so the
default is ``softiou``. Both are computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["soft_iou_loss", "make_loss", "LOSSES"]

LOSSES = ("softiou", "softiou+bce")


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Batch-level SoftIoU loss.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, 1, H, W)
        Network output (before the sigmoid).
    target : torch.Tensor, shape (B, 1, H, W)
        0/1 mask.
    smooth : float
        Added to numerator and denominator.

    Returns
    -------
    torch.Tensor, scalar float32
    """
    p = torch.sigmoid(logits.float())
    y = target.float()
    inter = (p * y).sum()
    return 1.0 - (inter + smooth) / (p.sum() + y.sum() - inter + smooth)


def make_loss(name: str, bce_weight: float = 0.5) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function called ``name`` (one of :data:`LOSSES`).

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name == "softiou":
        return soft_iou_loss
    if name == "softiou+bce":

        def softiou_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
            return soft_iou_loss(logits, target) + bce_weight * bce

        return softiou_bce
    raise ValueError(f"loss: expected one of {LOSSES}, got {name!r}")
