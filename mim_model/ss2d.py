"""SS2D: the 2-D selective-scan operator of MiM-ISTD (VMamba "v0" cross-scan).

Spec section 2.4. The four scan directions are row-major, column-major and the reverse
of each; the selective scan itself runs in float32 through :func:`mim_model.ops.selective_scan`
(the CUDA kernel of mamba_ssm on GPU, a vectorised PyTorch scan elsewhere).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mim_model.ops import selective_scan

__all__ = ["SS2D"]

NUM_DIRECTIONS = 4


class SS2D(nn.Module):
    """Selective scan over an (h, w) grid in four directions.

    Parameter names and shapes are the official ones (``x_proj_weight``,
    ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``, ``in_proj``, ``conv2d``,
    ``out_norm``, ``out_proj``), so an official checkpoint loads as is.
    """

    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: int = 2) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = ssm_ratio * d_model
        self.dt_rank = math.ceil(d_model / 16)
        k, d_inner, rank = NUM_DIRECTIONS, self.d_inner, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(
        self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4
    ) -> None:
        """Mamba's initialisation of the state-space parameters (spec section 2.4)."""
        k, d_inner, rank = NUM_DIRECTIONS, self.d_inner, self.dt_rank
        # x_proj keeps PyTorch's default Linear init (kaiming-uniform over fan_in = d_inner)
        bound = 1.0 / math.sqrt(d_inner)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = rank**-0.5
        nn.init.uniform_(self.dt_projs_weight, -std, std)
        dt = torch.exp(
            torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_logs.copy_(torch.log(a).expand(k * d_inner, -1))
        self.Ds.fill_(1.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, h, w, d_model) channels-last image -> (B, h, w, d_model)."""
        batch, h, w, _ = image.shape
        x, z = self.in_proj(image).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self._cross_scan(x)  # (B, d_inner, h*w), row-major
        y = self.out_norm(y.transpose(1, 2).reshape(batch, h, w, self.d_inner))
        y = y * F.silu(z)
        return self.out_proj(y)

    def _cross_scan(self, x: torch.Tensor) -> torch.Tensor:
        """Scan (B, d_inner, h, w) in 4 directions and merge back to (B, d_inner, h*w)."""
        batch, d_inner, h, w = x.shape
        length = h * w
        k = NUM_DIRECTIONS
        rows = x.reshape(batch, d_inner, length)
        cols = x.transpose(2, 3).reshape(batch, d_inner, length)
        forward_seqs = torch.stack([rows, cols], dim=1)
        xs = torch.cat([forward_seqs, forward_seqs.flip(-1)], dim=1)  # (B, 4, d_inner, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        out = selective_scan(
            xs.float().reshape(batch, k * d_inner, length),
            dts.float().reshape(batch, k * d_inner, length),
            -torch.exp(self.A_logs.float()),
            bs.float().contiguous(),
            cs.float().contiguous(),
            self.Ds.float(),
            z=None,
            delta_bias=self.dt_projs_bias.float().reshape(-1),
            delta_softplus=True,
        ).reshape(batch, k, d_inner, length)
        y_rows = out[:, 0] + out[:, 2].flip(-1)
        y_cols = out[:, 1] + out[:, 3].flip(-1)
        y_cols = y_cols.reshape(batch, d_inner, w, h).transpose(2, 3).reshape(batch, d_inner, length)
        return (y_rows + y_cols).to(x.dtype)
