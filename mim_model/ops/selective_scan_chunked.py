"""Fast pure-PyTorch selective scan ("chunked" backend): blocked, log-depth, no loop over L.

Same signature and semantics as :func:`mim_model.ops.selective_scan_ref.selective_scan_ref`
(and mamba_ssm's ``selective_scan_fn``). Runs on any device torch runs on, supports autograd.

How it works
------------
The state h (batch, dim, L, N) is never materialised whole. The work is cut into blocks of
about ``block_elems`` state values, laid out as (batch block, G, channel block, T, N), where
G is the number of B/C groups (channels of one group share B_t and C_t) and T is a chunk
of the sequence. For each block:

1. decays a = exp2(delta * A * log2(e)) (one broadcast multiply, one exp2: exp2 is ~3x
   cheaper than exp on CPU and, unlike torch's exp, has no slow path on underflow);
2. inputs x = (delta * u) * B (one broadcast multiply);
3. the carried state of the previous chunk is folded into x[0];
4. x is scanned in place along T by :mod:`mim_model.ops._linear_scan` (odd-even
   reduction: log2(T) levels of 3 strided in-place ops, only products of decays, so it
   cannot overflow for any delta >= 0 and A <= 0);
5. y = sum_n C * h is one in-place multiply plus (on CPU) a matrix-vector product with
   ones(N), which sums rows of 16 faster than ``sum(-1)``.

Python loops run over blocks and over chunks of the sequence (L / T of them, e.g. 16 for
L = 4096), never over single time steps. Without autograd the two block buffers are
reused and every op writes in place. With autograd (an input requires grad and grad mode is
on) the same blocks are computed with out-of-place ops; the scan is then
:class:`~mim_model.ops._linear_scan.LinearScanFn`, whose backward is the reverse-time scan.

Arithmetic is float32 (float64 when u is float64, which makes ``gradcheck`` possible);
the result is cast back to u's dtype like the reference. Against the reference (a float32
loop) the relative L2 error is ~1e-7 on MiM's shapes.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, cast, overload

import torch
import torch.nn.functional as F

from mim_model.errors import InputShapeError
from mim_model.ops._linear_scan import ScanPlan, linear_scan, plan_scan, run_scan

__all__ = ["DEFAULT_BLOCK_ELEMS", "DEFAULT_BLOCK_ELEMS_GPU", "DEFAULT_CHUNK_LEN", "selective_scan_chunked"]

#: State values per block on CPU (4 MiB per work buffer in float32): best measured on 2 cores.
DEFAULT_BLOCK_ELEMS = 1 << 20
#: State values per block on other devices (GPU): fewer, larger kernels.
DEFAULT_BLOCK_ELEMS_GPU = 1 << 24
#: Longest sequence chunk when a whole sequence does not fit in one block.
DEFAULT_CHUNK_LEN = 64

_LOG2E = 1.4426950408889634


def _groups(x: torch.Tensor) -> int | None:
    """Number of B/C groups: None for fixed (dim, N), 1 for (batch, N, L), G for (batch, G, N, L)."""
    if x.dim() == 2:
        return None
    return 1 if x.dim() == 3 else x.shape[1]


def _check_shapes(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise InputShapeError when the arguments do not fit selective_scan_fn's contract."""
    if u.dim() != 3:
        raise InputShapeError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length < 1 or batch < 1:
        raise InputShapeError(f"selective_scan: empty input, u has shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise InputShapeError(
            f"selective_scan: delta must be {tuple(u.shape)} like u, got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != dim:
        raise InputShapeError(f"selective_scan: A must be (dim={dim}, N), got {tuple(A.shape)}")
    n_state = A.shape[1]
    for name, m in (("B", B), ("C", C)):
        if m.dim() == 2:
            ok = tuple(m.shape) == (dim, n_state)
        elif m.dim() == 3:
            ok = tuple(m.shape) == (batch, n_state, length)
        elif m.dim() == 4:
            ok = (m.shape[0], m.shape[2], m.shape[3]) == (batch, n_state, length) and m.shape[1] > 0
            ok = ok and dim % m.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise InputShapeError(
                f"selective_scan: {name} must be (dim, N)=({dim}, {n_state}), (batch, N, L)="
                f"({batch}, {n_state}, {length}) or (batch, G, N, L) with G dividing {dim}; "
                f"got {tuple(m.shape)}"
            )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise InputShapeError(f"selective_scan: {name} must be ({dim},), got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise InputShapeError(f"selective_scan: z must be {tuple(u.shape)} like u, got {tuple(z.shape)}")


def _block_plan(
    batch: int, groups: int, dim_g: int, length: int, n_state: int, block_elems: int, chunk_len: int
) -> tuple[int, int, int]:
    """(batch block, channel block, chunk length) for blocks of about ``block_elems`` values.

    Whole sequences when one batch entry fits (then several batch entries per block),
    otherwise one batch entry, chunks of ``chunk_len`` and as many channels as fit.
    """
    per_batch = groups * dim_g * length * n_state
    if per_batch <= block_elems:
        return max(1, min(batch, block_elems // per_batch)), dim_g, length
    chunk = min(length, chunk_len)
    dim_block = max(1, min(dim_g, block_elems // (groups * chunk * n_state)))
    if dim_block == dim_g:
        chunk = min(length, max(chunk, block_elems // (groups * dim_g * n_state)))
    return 1, dim_block, chunk


def _as_blocks(
    m: torch.Tensor, groups: int, dim_g: int, n_groups: int | None, cdt: torch.dtype
) -> torch.Tensor:
    """B or C in block layout: variable -> (batch, G, 1, L, N); fixed -> (1, G, Dg, 1, N)."""
    if n_groups is None:
        return m.to(cdt).reshape(1, groups, dim_g, 1, m.shape[-1])
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if n_groups != groups:
        m = m.repeat_interleave(groups // n_groups, dim=1)
    return m.to(cdt).transpose(2, 3).contiguous().unsqueeze(2)


class _Blocks(NamedTuple):
    """Inputs in block layout (batch, G, Dg, L, N) and the block plan."""

    delta: torch.Tensor  # (batch, G, Dg, L, 1)
    du: torch.Tensor  # (batch, G, Dg, L, 1): delta * u
    a: torch.Tensor  # (1, G, Dg, 1, N): A * log2(e)
    b: torch.Tensor  # (batch, G, 1, L, N) if variable else (1, G, Dg, 1, N)
    b_variable: bool
    c: torch.Tensor  # like b
    c_variable: bool
    plan: tuple[int, int, int]  # batch block, channel block, chunk length

    def bc(
        self, b0: int, b1: int, d0: int, d1: int, l0: int, l1: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """B and C of one block, broadcastable to (bb, G, dgb, T, N)."""
        b = self.b[b0:b1, :, :, l0:l1] if self.b_variable else self.b[:, :, d0:d1]
        c = self.c[b0:b1, :, :, l0:l1] if self.c_variable else self.c[:, :, d0:d1]
        return b, c


@overload
def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = ...,
    z: torch.Tensor | None = ...,
    delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ...,
    return_last_state: Literal[False] = ...,
    *,
    block_elems: int | None = ...,
    chunk_len: int = ...,
) -> torch.Tensor: ...


@overload
def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = ...,
    z: torch.Tensor | None = ...,
    delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ...,
    *,
    return_last_state: Literal[True],
    block_elems: int | None = ...,
    chunk_len: int = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_last_state: Literal[True],
    *,
    block_elems: int | None = ...,
    chunk_len: int = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = ...,
    z: torch.Tensor | None = ...,
    delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ...,
    return_last_state: bool = ...,
    *,
    block_elems: int | None = ...,
    chunk_len: int = ...,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    block_elems: int | None = None,
    chunk_len: int = DEFAULT_CHUNK_LEN,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = <C_t, h_t> + D u_t.

    Parameters
    ----------
    u, delta : torch.Tensor
        r(batch, dim, L).
    A : torch.Tensor
        r(dim, N), normally negative.
    B, C : torch.Tensor
        r(dim, N) (fixed), r(batch, N, L) (variable) or r(batch, G, N, L) (variable,
        grouped: G divides dim, group g serves channels g*dim/G .. (g+1)*dim/G - 1).
    D, delta_bias : torch.Tensor or None
        r(dim).
    z : torch.Tensor or None
        r(batch, dim, L); the output is multiplied by silu(z).
    delta_softplus : bool
        Apply softplus to delta + delta_bias.
    return_last_state : bool
        Also return h_{L-1}.
    block_elems : int or None
        State values per block (work-buffer size); None: ``DEFAULT_BLOCK_ELEMS`` on CPU,
        ``DEFAULT_BLOCK_ELEMS_GPU`` elsewhere. Tuning only.
    chunk_len : int
        Longest sequence chunk when whole sequences do not fit a block; tuning only.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        y r(batch, dim, L) in u's dtype; with ``return_last_state`` also the last state
        r(batch, dim, N) in the compute dtype (float32, or float64 for float64 input).

    Raises
    ------
    InputShapeError
        If the shapes do not fit together.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    cdt = torch.float64 if dtype_in == torch.float64 else torch.float32
    batch, dim, length = u.shape
    n_state = A.shape[1]
    g_b, g_c = _groups(B), _groups(C)
    groups = math.lcm(g_b or 1, g_c or 1)
    dim_g = dim // groups

    u = u.to(cdt)
    delta = delta.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    du = delta * u
    # Time-major blocks (batch, G, Dg, L, 1) against (.., N): delta and u need no transpose.
    delta5 = delta.reshape(batch, groups, dim_g, length, 1)
    du5 = du.view(batch, groups, dim_g, length, 1)
    a5 = (A.to(cdt) * _LOG2E).reshape(1, groups, dim_g, 1, n_state)
    b5 = _as_blocks(B, groups, dim_g, g_b, cdt)
    c5 = _as_blocks(C, groups, dim_g, g_c, cdt)
    if block_elems is None:
        block_elems = DEFAULT_BLOCK_ELEMS if u.device.type == "cpu" else DEFAULT_BLOCK_ELEMS_GPU
    plan = _block_plan(batch, groups, dim_g, length, n_state, block_elems, chunk_len)

    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z)
    )
    blocks = _Blocks(delta5, du5, a5, b5, g_b is not None, c5, g_c is not None, plan)
    if needs_grad:
        y, last = _scan_blocks_autograd(blocks)
    else:
        y, last = _scan_blocks_inplace(blocks, keep_last=return_last_state)

    out = y.view(batch, dim, length)
    if needs_grad:
        if D is not None:
            out = out + u * D.to(cdt)[:, None]
        if z is not None:
            out = out * F.silu(z.to(cdt))
    else:
        if D is not None:
            out.addcmul_(u, D.to(cdt)[:, None])
        if z is not None:
            out.mul_(F.silu(z.to(cdt)))
    out = out.to(dtype_in)
    if return_last_state:
        return out, last.reshape(batch, dim, n_state)
    return out


def _block_ranges(total: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(total, start + step)) for start in range(0, total, step)]


def _scan_blocks_inplace(blk: _Blocks, keep_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """No-grad path: two reused work buffers, in-place ops.

    Returns y (batch, G, Dg, L) and the last state (batch, G, Dg, N), which is only filled
    in when ``keep_last`` (it also carries the state between chunks).
    """
    delta5, du5, a5 = blk.delta, blk.du, blk.a
    batch, groups, dim_g, length, _ = delta5.shape
    n_state = a5.shape[-1]
    bb, dgb, chunk = blk.plan
    dtype, device = delta5.dtype, delta5.device
    numel = bb * groups * dgb * chunk * n_state
    a_buf = torch.empty(numel, dtype=dtype, device=device)
    x_buf = torch.empty(numel, dtype=dtype, device=device)
    ones = torch.ones(n_state, dtype=dtype, device=device)
    on_cpu = device.type == "cpu"
    y = torch.empty(batch, groups, dim_g, length, dtype=dtype, device=device)
    last = torch.empty(batch, groups, dim_g, n_state, dtype=dtype, device=device)
    views: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, ScanPlan]] = {}
    for b0, b1 in _block_ranges(batch, bb):
        for d0, d1 in _block_ranges(dim_g, dgb):
            carry = last[b0:b1, :, d0:d1]
            for l0, l1 in _block_ranges(length, chunk):
                shape = (b1 - b0, groups, d1 - d0, l1 - l0, n_state)
                if shape not in views:  # contiguous views on the front of the buffers
                    n = math.prod(shape)
                    av, xv = a_buf[:n].view(shape), x_buf[:n].view(shape)
                    views[shape] = (av, xv, plan_scan(av, xv, 3))
                av, xv, steps = views[shape]
                b_blk, c_blk = blk.bc(b0, b1, d0, d1, l0, l1)
                torch.mul(delta5[b0:b1, :, d0:d1, l0:l1], a5[:, :, d0:d1], out=av)
                av.exp2_()
                torch.mul(du5[b0:b1, :, d0:d1, l0:l1], b_blk, out=xv)
                if l0 > 0:
                    xv[:, :, :, 0].addcmul_(av[:, :, :, 0], carry)
                run_scan(steps)
                if keep_last or l1 < length:
                    carry.copy_(xv[:, :, :, -1])
                xv.mul_(c_blk)
                y_blk = y[b0:b1, :, d0:d1, l0:l1]
                if not on_cpu:
                    y_blk.copy_(xv.sum(-1))
                elif y_blk.is_contiguous():  # on CPU a matrix-vector product sums rows of N fastest
                    torch.mv(xv.view(-1, n_state), ones, out=y_blk.view(-1))
                else:
                    y_blk.copy_(torch.mv(xv.view(-1, n_state), ones).view(shape[:-1]))
    return y, last


def _scan_blocks_autograd(blk: _Blocks) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd path: same blocks, out-of-place ops, differentiable scan (see _scan_blocks_inplace)."""
    delta5, du5, a5 = blk.delta, blk.du, blk.a
    batch, _, dim_g, length, _ = delta5.shape
    bb, dgb, chunk = blk.plan
    y_rows: list[torch.Tensor] = []
    last_rows: list[torch.Tensor] = []
    for b0, b1 in _block_ranges(batch, bb):
        y_cols: list[torch.Tensor] = []
        last_cols: list[torch.Tensor] = []
        for d0, d1 in _block_ranges(dim_g, dgb):
            y_chunks: list[torch.Tensor] = []
            carry: torch.Tensor | None = None
            for l0, l1 in _block_ranges(length, chunk):
                b_blk, c_blk = blk.bc(b0, b1, d0, d1, l0, l1)
                decay = torch.exp2(delta5[b0:b1, :, d0:d1, l0:l1] * a5[:, :, d0:d1])
                x = du5[b0:b1, :, d0:d1, l0:l1] * b_blk
                h = linear_scan(decay, x, carry, dim=3)
                carry = h[:, :, :, -1]
                y_chunks.append((h * c_blk).sum(-1))
            y_cols.append(torch.cat(y_chunks, dim=3))
            last_cols.append(cast(torch.Tensor, carry))  # L >= 1: the chunk loop ran
        y_rows.append(torch.cat(y_cols, dim=2))
        last_rows.append(torch.cat(last_cols, dim=2))
    return torch.cat(y_rows, dim=0), torch.cat(last_rows, dim=0)
