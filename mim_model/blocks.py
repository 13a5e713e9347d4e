"""Building blocks of MiM-ISTD (spec sections 2.1-2.6). Attribute names follow the
official module tree so that the official state_dict loads with strict=True."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mim_model import layout as tok
from mim_model.config import Layout
from mim_model.ss2d import SS2D

__all__ = [
    "DropPath",
    "InvertedResidualFeedForward",
    "MiMBlock",
    "Stage",
    "Stem",
    "WordMerge",
    "SentenceMerge",
    "UpBlock",
    "PatchExpand",
    "ResBlock",
    "FCNHead",
]

WORDS = tok.WORDS_PER_SIDE**2


def _conv_bn_act(cin: int, cout: int, stride: int, act: type[nn.Module] = nn.ReLU) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), act()]


class _ConvGeluBn(nn.Module):
    """1x1 conv, GELU, BN (official name: ``conv1x1_gelu_bn.conv3x3_gelu_bn``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv3x3_gelu_bn = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.GELU(), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3x3_gelu_bn(x)


class _DepthwiseConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class InvertedResidualFeedForward(nn.Module):
    """Conv feed-forward (ratio 2): a = BN(GELU(1x1(x))); a += BN(GELU(dw3x3(a)));
    out = BN(1x1(a)). Works on (B, d, h, w) images."""

    def __init__(self, dim: int, ratio: int = 2) -> None:
        super().__init__()
        hidden = dim * ratio
        self.conv1x1_gelu_bn = _ConvGeluBn(dim, hidden)
        self.conv3x3_dw = _DepthwiseConv(hidden)
        self.act = nn.Sequential(nn.GELU(), nn.BatchNorm2d(hidden))
        self.conv1x1_pw = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1x1_gelu_bn(x)
        a = a + self.act(self.conv3x3_dw(a))
        return self.conv1x1_pw(a)


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (Huang et al. 2016): in training, the branch of
    a share ``rate`` of the images is zeroed and the others' is scaled by ``1 / (1 - rate)``,
    so its expectation is unchanged; in eval mode (or at rate 0) the branch passes as is.

    Tokens of one image may span several rows of the branch (inner tokens are (B*N, 16, c),
    image-major): ``images`` says how many images the first dimension holds, and all rows of
    one image are kept or dropped together.
    """

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate: expected a rate in [0, 1), got {rate!r}")
        self.rate = rate

    def forward(self, branch: torch.Tensor, images: int | None = None) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return branch
        images = branch.shape[0] if images is None else images
        keep = torch.rand(images, device=branch.device) >= self.rate
        scale = keep.to(branch.dtype) / (1.0 - self.rate)
        scale = scale.repeat_interleave(branch.shape[0] // images)
        return branch * scale.view(-1, *([1] * (branch.dim() - 1)))

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class MiMBlock(nn.Module):
    """One pre-norm residual block: optional inner (word) part, then the outer part."""

    def __init__(
        self,
        outer_dim: int,
        inner_dim: int,
        has_inner: bool,
        layout: Layout,
        d_state: int = 16,
        ssm_ratio: int = 2,
        ffn_ratio: int = 2,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.has_inner = has_inner
        self.drop_path = DropPath(drop_path_rate)
        if has_inner:
            flat = WORDS * inner_dim
            self.inner_norm1 = nn.LayerNorm(flat)
            self.inner_attn = SS2D(inner_dim, d_state, ssm_ratio)
            self.inner_norm2 = nn.LayerNorm(flat)
            self.inner_mlp = InvertedResidualFeedForward(inner_dim, ffn_ratio)
            self.proj_norm1 = nn.LayerNorm(flat)
            self.proj = nn.Linear(flat, outer_dim, bias=False)
            self.proj_norm2 = nn.LayerNorm(outer_dim)
        self.outer_norm1 = nn.LayerNorm(outer_dim)
        self.outer_attn = SS2D(outer_dim, d_state, ssm_ratio)
        self.outer_norm2 = nn.LayerNorm(outer_dim)
        self.outer_mlp = InvertedResidualFeedForward(outer_dim, ffn_ratio)

    def forward(
        self, inner: torch.Tensor, outer: torch.Tensor, hs: int, ws: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inner (B*N, 16, c), outer (B, N, C) with N = hs*ws; returns both updated."""
        batch, n, _ = outer.shape
        lay = self.layout
        k = tok.WORDS_PER_SIDE
        if self.has_inner:
            words = inner.shape[-1]
            normed = self.inner_norm1(inner.reshape(batch * n, -1)).reshape(batch * n, WORDS, words)
            scanned = self.inner_attn(tok.tokens_to_scan_image(normed, k, k, lay))
            inner = inner + self.drop_path(tok.scan_image_to_tokens(scanned), batch)
            normed = self.inner_norm2(inner.reshape(batch * n, -1)).reshape(batch * n, WORDS, words)
            ffn = self.inner_mlp(tok.inner_tokens_to_image(normed, batch, hs, ws, lay))
            inner = inner + self.drop_path(tok.inner_image_to_tokens(ffn, lay), batch)
            outer = outer + self.proj_norm2(self.proj(self.proj_norm1(inner.reshape(batch, n, -1))))
        scanned = self.outer_attn(tok.tokens_to_scan_image(self.outer_norm1(outer), hs, ws, lay))
        outer = outer + self.drop_path(tok.scan_image_to_tokens(scanned))
        ffn = self.outer_mlp(tok.outer_tokens_to_image(self.outer_norm2(outer), hs, ws, lay))
        outer = outer + self.drop_path(tok.outer_image_to_tokens(ffn, lay))
        return inner, outer


class Stage(nn.Module):
    """Blocks of one resolution. Block 0 has an inner part; the others are outer-only
    (the official rule "inner also when depth > 6" never fires for depth 2)."""

    def __init__(
        self,
        depth: int,
        outer_dim: int,
        inner_dim: int,
        layout: Layout,
        relative_pos_shape: tuple[int, ...] | None = None,
        d_state: int = 16,
        ssm_ratio: int = 2,
        ffn_ratio: int = 2,
        drop_path_rates: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        rates = drop_path_rates or (0.0,) * depth
        if len(rates) != depth:
            raise ValueError(f"drop_path_rates: expected {depth} rates (one a block), got {len(rates)}")
        if relative_pos_shape is not None:
            # unused by the forward pass; present only so an official checkpoint loads strictly
            self.relative_pos = nn.Parameter(torch.zeros(relative_pos_shape), requires_grad=False)
        self.blocks = nn.ModuleList(
            MiMBlock(
                outer_dim,
                inner_dim,
                has_inner=(i == 0 or depth > 6),
                layout=layout,
                d_state=d_state,
                ssm_ratio=ssm_ratio,
                ffn_ratio=ffn_ratio,
                drop_path_rate=rates[i],
            )
            for i in range(depth)
        )

    def forward(self, inner, outer, hs: int, ws: int):
        for block in self.blocks:
            inner, outer = block(inner, outer, hs, ws)
        return inner, outer


class Stem(nn.Module):
    """Visual sentences and words from the image (official name ``patch_embed``)."""

    def __init__(self, in_chans: int, inner_dim: int, outer_dim: int) -> None:
        super().__init__()
        self.common_conv = nn.Sequential(*_conv_bn_act(in_chans, 8, 2))
        self.inner_convs = nn.Sequential(*_conv_bn_act(8, inner_dim, 1))
        self.outer_convs = nn.Sequential(
            *_conv_bn_act(8, 16, 2), *_conv_bn_act(16, outer_dim, 2), *_conv_bn_act(outer_dim, outer_dim, 1)
        )
        self.unfold = nn.Unfold(kernel_size=tok.WORDS_PER_SIDE, stride=tok.WORDS_PER_SIDE)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(B, 3, H, W) -> inner (B*N, 16, c), outer (B, N, C), Hs, Ws (N = Hs*Ws = H*W/64)."""
        batch = x.shape[0]
        common = self.common_conv(x)
        words = self.inner_convs(common)  # (B, c, H/2, W/2)
        channels = words.shape[1]
        unfolded = self.unfold(words)  # (B, c*16, N), channel-major
        n = unfolded.shape[-1]
        inner = unfolded.transpose(1, 2).reshape(batch * n, channels, WORDS).transpose(1, 2)
        outer_map = self.outer_convs(common)  # (B, C, H/8, W/8)
        hs, ws = outer_map.shape[-2:]
        outer = outer_map.flatten(2).transpose(1, 2)
        return inner, outer, hs, ws


class WordMerge(nn.Module):
    """LN, then each 2x2 block of sentences becomes one 8x8 word grid, convolved (k3 s2 p1)
    back to 4x4 words of doubled width."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.norm = nn.LayerNorm(in_dim)
        self.conv = nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1))

    def forward(self, inner: torch.Tensor, batch: int, hs: int, ws: int) -> torch.Tensor:
        k = tok.WORDS_PER_SIDE
        channels = inner.shape[-1]
        x = self.norm(inner).reshape(batch, hs // 2, 2, ws // 2, 2, k, k, channels)
        # (B, I, di, J, dj, r, c, ch) -> (B, I, J, ch, di, r, dj, c): an 8x8 grid per block
        x = x.permute(0, 1, 3, 7, 2, 5, 4, 6).reshape(-1, channels, 2 * k, 2 * k)
        x = self.conv(x)  # (B*N/4, out, 4, 4)
        return x.reshape(-1, self.out_dim, WORDS).transpose(1, 2)


class SentenceMerge(nn.Module):
    """Swin patch merging: 2x2 neighbours concatenated, LN(4C), Linear(4C -> 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, outer: torch.Tensor, hs: int, ws: int) -> torch.Tensor:
        batch, _, channels = outer.shape
        x = outer.reshape(batch, hs, ws, channels)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(batch, -1, 4 * channels)))


class UpBlock(nn.Module):
    """Sentence map (B, C, Hs, Ws) -> (B, C, 2Hs, 2Ws): ConvT 2x2, BN, GELU, conv3x3, BN, GELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.transposed_conv = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.batch_norm1 = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.batch_norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.batch_norm1(self.transposed_conv(x)))
        return F.gelu(self.batch_norm2(self.conv(x)))


class PatchExpand(nn.Module):
    """(B, C, h, w) -> (B, C/2, 2h, 2w): Linear(C -> 2C), 2x2 pixel shuffle, LN(C/2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, h, w = x.shape
        y = self.expand(x.permute(0, 2, 3, 1))  # (B, h, w, 2C) = (p1, p2, C/2)
        half = channels // 2
        y = y.reshape(batch, h, w, 2, 2, half).permute(0, 1, 3, 2, 4, 5).reshape(batch, 2 * h, 2 * w, half)
        return self.norm(y).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """conv3x3, BN, ReLU, conv3x3, BN, + identity, ReLU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class FCNHead(nn.Module):
    """conv3x3 (no bias), BN, ReLU, Dropout(0.1), conv1x1 -> 1 channel of logits."""

    def __init__(self, dim: int, hidden: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)
