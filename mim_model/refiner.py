"""Outline refiner: a small network that redraws MiM's target outlines at native resolution.

MiM sees an image resized by its ``input_scale`` and answers on a grid of a quarter of that
(half the native pixel grid at scale 2); its probabilities come back to native resolution
by bilinear resizing. SIRST's masks were drawn on the native 8-bit pixels, and nine tenths
of the network's error on them is outline pixels of targets it found (docs/benchmarks.md,
"An outline refiner"). The refiner looks at the native pixels and MiM's probability
together and adds a correction to MiM's logit:

    features = [image standardised per image,
                image minus its ``contrast_box_px`` box mean (same scale),
                MiM probability,
                MiM logit / 4]
    logit    = MiM logit + head(body(features))

``body`` is a few 3x3 convolutions (dilated, ReLU); ``head`` a 1x1 convolution initialised
at zero, so an untrained refiner returns MiM's logit unchanged. It is local: its receptive
field is :attr:`RefinerConfig.reach_px` pixels each side, so it can run in strips.

Weights files may carry a refiner beside the network (tensors ``refiner.*``, metadata
``refiner_config``; :func:`mim_model.weights.load_refiner`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OutlineRefiner", "RefinerConfig", "probability_features", "refine_probs", "refiner_features"]

#: Probabilities are clipped to [eps, 1 - eps] before their logit is taken.
PROB_EPS = 1e-4
#: MiM's logit enters the features divided by this (keeps the features of order one).
LOGIT_FEATURE_SCALE = 4.0
#: Added to an image's standard deviation (8-bit / 255 units) before dividing by it.
STD_FLOOR = 1e-3


@dataclass(frozen=True)
class RefinerConfig:
    """Shape of the refiner: ``width`` channels, one 3x3 convolution per dilation, and the
    side of the box mean the contrast feature is taken against (odd, pixels)."""

    width: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    contrast_box_px: int = 15

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width: expected at least 1 channel, got {self.width}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"dilations: expected one or more positive dilations, got {self.dilations}")
        if self.contrast_box_px < 1 or self.contrast_box_px % 2 == 0:
            raise ValueError(f"contrast_box_px: expected an odd number of pixels, got {self.contrast_box_px}")

    @property
    def reach_px(self) -> int:
        """How far (pixels) an output pixel sees: the convolutions' reach plus the box's."""
        return sum(self.dilations) + self.contrast_box_px // 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RefinerConfig:
        raw = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _clipped_logit(prob: torch.Tensor) -> torch.Tensor:
    p = prob.clamp(PROB_EPS, 1.0 - PROB_EPS)
    return torch.log(p / (1.0 - p))


def probability_features(prob: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) MiM probability -> its two feature channels: the probability and its
    clipped logit / :data:`LOGIT_FEATURE_SCALE` (channels 2 and 3 of :func:`refiner_features`)."""
    return torch.cat([prob, _clipped_logit(prob) / LOGIT_FEATURE_SCALE], dim=1)


def refiner_features(
    image01: torch.Tensor, prob: torch.Tensor, contrast_box_px: int,
    mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 1, H, W) grey image in [0, 1] and MiM probability -> (B, 4, H, W) features.

    ``mean`` and ``std`` (shape (B, 1, 1, 1)) standardise the image; by default each image's
    own (population standard deviation), so a strip of an image can be given its whole
    image's statistics.
    """
    if mean is None:
        mean = image01.mean(dim=(2, 3), keepdim=True)
    if std is None:
        std = image01.std(dim=(2, 3), keepdim=True, unbiased=False)
    scale = std + STD_FLOOR
    half = contrast_box_px // 2
    box_mean = F.avg_pool2d(F.pad(image01, (half, half, half, half), mode="replicate"), contrast_box_px, stride=1)
    return torch.cat(
        [(image01 - mean) / scale, (image01 - box_mean) / scale, probability_features(prob)], dim=1,
    )


class OutlineRefiner(nn.Module):
    """MiM logit + a local correction from the native pixels (see the module docstring)."""

    def __init__(self, config: RefinerConfig | None = None) -> None:
        super().__init__()
        self.config = config or RefinerConfig()
        layers: list[nn.Module] = []
        channels = 4
        for dilation in self.config.dilations:
            layers += [nn.Conv2d(channels, self.config.width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            channels = self.config.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) features -> (B, 1, H, W) refined logits."""
        return features[:, 3:4] * LOGIT_FEATURE_SCALE + self.head(self.body(features))

    def forward(self, image01: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) grey image in [0, 1] and MiM probability -> refined logits."""
        return self.forward_features(refiner_features(image01, prob, self.config.contrast_box_px))


@torch.inference_mode()
def refine_probs(
    refiner: OutlineRefiner, image01: npt.NDArray[np.floating], prob: npt.NDArray[np.floating], strip_px: int = 512,
) -> npt.NDArray[np.float32]:
    """Refined probabilities of one (H, W) image, on the refiner's device, in row strips of
    ``strip_px`` (each run with :attr:`RefinerConfig.reach_px` rows of context either side,
    the image's own mean and standard deviation), so memory stays bounded for any size."""
    device = next(refiner.parameters()).device
    refiner.eval()
    image = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None, None].to(device)
    p = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None, None].to(device)
    mean = image.mean(dim=(2, 3), keepdim=True)
    std = image.std(dim=(2, 3), keepdim=True, unbiased=False)
    height = image.shape[2]
    reach = refiner.config.reach_px
    out = torch.empty_like(p)
    for top in range(0, height, strip_px):
        bottom = min(height, top + strip_px)
        lo, hi = max(0, top - reach), min(height, bottom + reach)
        feats = refiner_features(image[:, :, lo:hi], p[:, :, lo:hi], refiner.config.contrast_box_px, mean, std)
        out[:, :, top:bottom] = torch.sigmoid(refiner.forward_features(feats))[:, :, top - lo : bottom - lo]
    return out[0, 0].cpu().numpy()
