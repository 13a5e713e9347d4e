"""MiM-ISTD (Mamba-in-Mamba for infrared small target detection, IEEE TGRS 2024).

A clean-room implementation from ``docs``/spec: ``MiM()`` with no arguments is the official
TGRS configuration with the official parameter names, so the authors' checkpoint loads
(see :mod:`mim_model.weights`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from mim_model.blocks import (
    FCNHead,
    PatchExpand,
    ResBlock,
    SentenceMerge,
    Stage,
    Stem,
    UpBlock,
    WordMerge,
)
from mim_model.config import Layout, MiMConfig
from mim_model.errors import InputShapeError

__all__ = ["MiM", "MiMEncoder", "check_input_shape"]


def check_input_shape(shape: tuple[int, ...], in_chans: int = 3, multiple_px: int = 64) -> None:
    """Raise :class:`InputShapeError` unless shape is (B, 1 or in_chans, S, S), S % 64 == 0."""
    if len(shape) != 4:
        raise InputShapeError(f"input: expected a 4-D tensor (B, C, H, W), got shape {tuple(shape)}")
    _, channels, height, width = shape
    if channels not in (1, in_chans):
        raise InputShapeError(
            f"input channels: expected 1 (grey) or {in_chans}, got {channels} (shape {tuple(shape)})"
        )
    if height != width or height % multiple_px or height == 0:
        raise InputShapeError(
            f"input size: expected H == W and a positive multiple of {multiple_px}, "
            f"got {height}x{width} (shape {tuple(shape)}); pad the image to a square multiple of {multiple_px}"
        )


def _drop_path_rates(rate: float, depths: tuple[int, ...]) -> list[tuple[float, ...]]:
    """Stochastic-depth rates a stage, rising linearly over all blocks from 0 to ``rate``."""
    total = sum(depths)
    flat = [rate * i / max(total - 1, 1) for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [tuple(flat[s : s + d]) for s, d in zip(starts, depths)]


class MiMEncoder(nn.Module):
    """Stem, 4 stages with word/sentence merges between them, one up-block per stage.

    Returns the four up-sampled sentence maps at H/4, H/8, H/16 and H/32.
    """

    def __init__(self, config: MiMConfig) -> None:
        super().__init__()
        self.config = config
        outer, inner = config.outer_dims, config.inner_dims
        self.patch_embed = Stem(config.in_chans, inner[0], outer[0])
        self.word_merges = nn.ModuleList(WordMerge(inner[i], inner[i + 1]) for i in range(3))
        self.sentence_merges = nn.ModuleList(SentenceMerge(outer[i]) for i in range(3))
        rel = config.relative_pos_shapes if config.keep_relative_pos else (None,) * 4
        rates = _drop_path_rates(config.drop_path_rate, config.depths)
        self.stages = nn.ModuleList(
            Stage(
                config.depths[i],
                outer[i],
                inner[i],
                config.layout,
                relative_pos_shape=rel[i],
                d_state=config.d_state,
                ssm_ratio=config.ssm_ratio,
                ffn_ratio=config.ffn_ratio,
                drop_path_rates=rates[i],
            )
            for i in range(4)
        )
        self.norm = nn.LayerNorm(outer[-1])  # exists in the official model, never used
        self.up_blocks = nn.ModuleList(UpBlock(outer[i]) for i in range(4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch = x.shape[0]
        inner, outer, hs, ws = self.patch_embed(x)
        maps = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                inner = self.word_merges[i - 1](inner, batch, hs, ws)
                outer = self.sentence_merges[i - 1](outer, hs, ws)
                hs, ws = hs // 2, ws // 2
            inner, outer = stage(inner, outer, hs, ws)
            sentence_map = outer.transpose(1, 2).reshape(batch, -1, hs, ws)
            maps.append(self.up_blocks[i](sentence_map))
        return maps


class MiM(nn.Module):
    """MiM-ISTD: (B, 3, S, S) or (B, 1, S, S) float image -> (B, 1, S, S) logits.

    S must be a multiple of 64. Grey input is replicated to 3 channels. No normalisation
    happens inside; the caller feeds what the weights were trained on.

    Parameters
    ----------
    config
        A :class:`MiMConfig`; keyword overrides (``layout="spatial"``,
        ``keep_relative_pos=True``, ...) are applied on top of it.
    """

    def __init__(self, config: MiMConfig | None = None, **overrides) -> None:
        super().__init__()
        config = replace(config or MiMConfig(), **overrides)
        self.config = config
        outer = config.outer_dims
        self.mim_backbone = MiMEncoder(config)
        self.deconv3 = PatchExpand(outer[3])
        self.uplayer3 = nn.Sequential(ResBlock(outer[2]), ResBlock(outer[2]))
        self.deconv2 = PatchExpand(outer[2])
        self.uplayer2 = nn.Sequential(ResBlock(outer[1]), ResBlock(outer[1]))
        self.deconv1 = PatchExpand(outer[1])
        self.uplayer1 = nn.Sequential(ResBlock(outer[0]), ResBlock(outer[0]))
        self.head = FCNHead(outer[0])
        self._init_encoder_weights()

    @property
    def layout(self) -> Layout:
        return self.config.layout

    def _init_encoder_weights(self) -> None:
        """Encoder re-init of the official code (spec section 2.8); the decoder keeps
        PyTorch defaults. SS2D's own state-space parameters are initialised in SS2D."""
        for module in self.mim_backbone.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                fan_out //= module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_decoder_maps(x)[0]

    def forward_with_decoder_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits as :meth:`forward`, and the decoder's two coarser maps (``u3`` at H/16 with
        ``outer_dims[2]`` channels, ``u2`` at H/8 with ``outer_dims[1]``) for deep supervision
        in training (:mod:`mim_model.training.deep_supervision`)."""
        check_input_shape(tuple(x.shape), self.config.in_chans, self.config.side_multiple_px)
        if x.shape[1] == 1 and self.config.in_chans != 1:
            x = x.expand(-1, self.config.in_chans, -1, -1)
        t1, t2, t3, t4 = self.mim_backbone(x)
        u3 = self.uplayer3(self.deconv3(t4) + t3)
        u2 = self.uplayer2(self.deconv2(u3) + t2)
        u1 = self.uplayer1(self.deconv1(u2) + t1)
        logits = self.head(u1)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False), (u3, u2)
