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


SumReducer = Callable[[torch.Tensor], torch.Tensor]


def soft_iou_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, reduce_sums: SumReducer | None = None
) -> torch.Tensor:
    """Batch-level SoftIoU loss.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, 1, H, W)
        Network output (before the sigmoid).
    target : torch.Tensor, shape (B, 1, H, W)
        0/1 mask.
    smooth : float
        Added to numerator and denominator.
    reduce_sums : callable, optional
        Applied to the stacked sums ``[sum(p*y), sum(p) + sum(y)]`` before the ratio. For
        data-parallel training, a differentiable all-reduce (:mod:`mim_model.training.distributed`)
        makes the sums run over the whole batch of all processes.

    Returns
    -------
    torch.Tensor, scalar float32
    """
    p = torch.sigmoid(logits.float())
    y = target.float()
    sums = torch.stack([(p * y).sum(), p.sum() + y.sum()])
    if reduce_sums is not None:
        sums = reduce_sums(sums)
    inter, total = sums[0], sums[1]
    return 1.0 - (inter + smooth) / (total - inter + smooth)


def make_loss(
    name: str, bce_weight: float = 0.5, reduce_sums: SumReducer | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function called ``name`` (one of :data:`LOSSES`); ``reduce_sums`` as in
    :func:`soft_iou_loss` (the BCE term is a per-process mean: data-parallel training
    averages its gradients, which gives the mean over the whole batch).

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
    raise ValueError(f"loss: expected one of {LOSSES}, got {name!r}")
