"""Deep supervision for training: side outputs on MiM's coarser decoder maps.

Many IRSTD networks (DNANet, UIU-Net, MSHNet) are trained with a loss on the output of each
decoder level as well as the last, so that the deeper levels learn to place small targets
directly. :class:`DecoderHeads` adds one 1x1 convolution to each of MiM's two coarser decoder
maps (``u3`` at H/16, ``u2`` at H/8; :meth:`mim_model.network.MiM.forward_with_decoder_maps`),
up-sampled bilinearly to the input size. The heads exist only in training: the exported
weights are the plain network, and inference never computes them.

The training loss becomes ``loss(logits) + weight * mean(loss(side) for side in sides)``
(:func:`deeply_supervised_loss`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mim_model.network import MiM

__all__ = ["DecoderHeads", "DeeplySupervisedMiM", "deeply_supervised_loss"]


class DecoderHeads(nn.Module):
    """One 1x1 convolution a coarser decoder map (``u3``, ``u2``) to a one-channel logit."""

    def __init__(self, outer_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.side3 = nn.Conv2d(outer_dims[2], 1, kernel_size=1)
        self.side2 = nn.Conv2d(outer_dims[1], 1, kernel_size=1)

    def forward(self, u3: torch.Tensor, u2: torch.Tensor, size_px: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        return tuple(
            F.interpolate(head(feature), size=size_px, mode="bilinear", align_corners=False)
            for head, feature in ((self.side3, u3), (self.side2, u2))
        )


class DeeplySupervisedMiM(nn.Module):
    """A MiM and its training-only :class:`DecoderHeads`: image -> (logits, side logits).

    ``network`` is the model that is averaged, evaluated, checkpointed and exported; the heads
    are checkpointed beside it for resuming.
    """

    def __init__(self, network: MiM) -> None:
        super().__init__()
        self.network = network
        self.heads = DecoderHeads(network.config.outer_dims)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        logits, (u3, u2) = self.network.forward_with_decoder_maps(x)
        return logits, self.heads(u3, u2, tuple(logits.shape[-2:]))


def deeply_supervised_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    side_logits: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    weight: float,
) -> torch.Tensor:
    """``loss_fn(logits) + weight * mean over the sides of loss_fn(side)``, all against ``target``."""
    side = torch.stack([loss_fn(s, target) for s in side_logits]).mean()
    return loss_fn(logits, target) + weight * side
