"""Log-depth, in-place solver of the first-order linear recurrence h_t = a_t h_{t-1} + x_t.

This is the inner engine of :mod:`mim_model.ops.selective_scan_chunked`. It works on one
block at a time, along one tensor dimension ("time"), with no Python loop over time: an
odd-even (Brent-Kung style) reduction. Level k folds each odd position into the pair
(a_o a_e, a_o x_e + x_o) and recurses on the odd positions (a view with twice the stride);
on the way back each even position is finished with one fused multiply-add from its odd
neighbour. Every level is three in-place element-wise ops on strided views of the same two
buffers, so the whole scan does about 3 passes over the block, allocates nothing, and needs
log2(T) levels. Only products of decays (values in [0, 1] for a selective scan) are formed,
so nothing can overflow.

Two entry points:

- :func:`plan_scan` + :func:`run_scan`: precompute the views once per buffer shape, then
  rerun the scan on new buffer contents (used by the no-grad fast path, which reuses two
  work buffers for every block).
- :class:`LinearScanFn`: the same scan as a :class:`torch.autograd.Function`; its backward
  is the reverse-time recurrence g_t = dh_t + a_{t+1} g_{t+1}, solved by the same kernel.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LinearScanFn", "ScanPlan", "linear_scan", "plan_scan", "run_scan"]

# One level of the odd-even scan: (a_odd, a_even, x_odd, x_even, fix, fold_decays), where
# fix = (x_even[1:], a_even[1:], x_odd[:-?]) finishes the even positions after recursion.
_Level = tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    "tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None",
    bool,
]
ScanPlan = list[_Level]


def _along(x: torch.Tensor, dim: int, start: int, stop: int, step: int = 1) -> torch.Tensor:
    """View of ``x[..., start:stop:step, ...]`` with the slice on dimension ``dim``."""
    index: list[slice] = [slice(None)] * x.dim()
    index[dim] = slice(start, stop, step)
    return x[tuple(index)]


def plan_scan(a: torch.Tensor, x: torch.Tensor, dim: int) -> ScanPlan:
    """Precompute the strided views of an in-place scan of ``x`` along ``dim``.

    Parameters
    ----------
    a, x : torch.Tensor
        Same shape (any rank), same dtype; ``a`` holds the decays a_t, ``x`` the inputs
        x_t. Both are overwritten by :func:`run_scan` (``x`` with the states h_t, ``a``
        with partial products of decays).
    dim : int
        The time dimension.

    Returns
    -------
    ScanPlan
        Views into ``a`` and ``x``; valid as long as those buffers live.

    Raises
    ------
    ValueError
        If ``a`` and ``x`` differ in shape.
    """
    if a.shape != x.shape:
        raise ValueError(f"plan_scan: a and x must have the same shape, got {a.shape} and {x.shape}")
    dim = dim % a.dim()
    levels: ScanPlan = []
    length = a.shape[dim]
    while length > 1:
        half = length // 2
        a_even = _along(a, dim, 0, 2 * half, 2)
        a_odd = _along(a, dim, 1, 2 * half, 2)
        x_even = _along(x, dim, 0, 2 * half, 2)
        x_odd = _along(x, dim, 1, 2 * half, 2)
        n_fix = (length - 1) // 2  # even positions 2, 4, .. 2*n_fix need their odd left neighbour
        fix = None
        if n_fix > 0:
            fix = (
                _along(x, dim, 2, 2 * n_fix + 1, 2),
                _along(a, dim, 2, 2 * n_fix + 1, 2),
                _along(x, dim, 1, 2 * n_fix, 2),
            )
        levels.append((a_odd, a_even, x_odd, x_even, fix, half > 1))
        a, x, length = a_odd, x_odd, half
    return levels


def run_scan(plan: ScanPlan) -> None:
    """Run a planned scan in place: afterwards ``x[t] = a[t] * x[t-1] + x[t]`` cumulatively.

    The initial state is zero; fold a nonzero initial state h0 in beforehand with
    ``x[0] += a[0] * h0``.
    """
    for a_odd, a_even, x_odd, x_even, _, fold_decays in plan:
        x_odd.addcmul_(a_odd, x_even)
        if fold_decays:
            a_odd.mul_(a_even)
    for _, _, _, _, fix, _ in reversed(plan):
        if fix is not None:
            fix[0].addcmul_(fix[1], fix[2])


def _scan_inplace(a: torch.Tensor, x: torch.Tensor, dim: int) -> None:
    run_scan(plan_scan(a, x, dim))


class LinearScanFn(torch.autograd.Function):
    """Differentiable h = scan(a, x, h0) along ``dim``; see :func:`linear_scan`."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        a: torch.Tensor,
        x: torch.Tensor,
        h0: torch.Tensor | None,
        dim: int,
    ) -> torch.Tensor:
        dim = dim % a.dim()
        h = x.clone()
        if h0 is not None:
            _along(h, dim, 0, 1).addcmul_(_along(a, dim, 0, 1), h0.unsqueeze(dim))
        _scan_inplace(a.clone(), h, dim)
        ctx.dim = dim  # type: ignore[attr-defined]
        ctx.save_for_backward(a, h, h0)  # type: ignore[arg-type]  # h0 may be None
        return h

    @staticmethod
    def backward(
        ctx: Any, grad_h: torch.Tensor  # noqa: ANN401 -- carries attributes set in forward
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        a, h, h0 = ctx.saved_tensors
        dim: int = ctx.dim
        length = a.shape[dim]
        # g_t = grad_h_t + a_{t+1} g_{t+1}: a forward scan in reversed time with the decays
        # shifted by one (the coefficient at reversed position s >= 1 is a_{T-s}).
        g = grad_h.flip(dim).contiguous()
        coef = torch.zeros_like(a)
        if length > 1:
            _along(coef, dim, 1, length).copy_(_along(a, dim, 1, length).flip(dim))
        _scan_inplace(coef, g, dim)
        g = g.flip(dim)
        grad_a = grad_x = grad_h0 = None
        if ctx.needs_input_grad[0]:
            h_prev = torch.zeros_like(h)
            if length > 1:
                _along(h_prev, dim, 1, length).copy_(_along(h, dim, 0, length - 1))
            if h0 is not None:
                _along(h_prev, dim, 0, 1).copy_(h0.unsqueeze(dim))
            grad_a = g * h_prev
        if ctx.needs_input_grad[1]:
            grad_x = g
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = (_along(a, dim, 0, 1) * _along(g, dim, 0, 1)).squeeze(dim)
        return grad_a, grad_x, grad_h0, None


def linear_scan(
    a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None = None, dim: int = -1
) -> torch.Tensor:
    """Solve h_t = a_t h_{t-1} + x_t along ``dim`` (h_{-1} = h0, or 0), differentiably.

    Parameters
    ----------
    a, x : torch.Tensor
        Decays and inputs, same shape and floating dtype; time runs along ``dim``.
    h0 : torch.Tensor or None
        Initial state, the shape of ``a`` without ``dim``.
    dim : int
        The time dimension.

    Returns
    -------
    torch.Tensor
        h, the shape of ``x``. Inputs are not modified.

    Raises
    ------
    ValueError
        If ``a`` and ``x`` differ in shape.
    """
    if a.shape != x.shape:
        raise ValueError(f"linear_scan: a and x must have the same shape, got {a.shape} and {x.shape}")
    out: torch.Tensor = LinearScanFn.apply(a, x, h0, dim)  # type: ignore[no-untyped-call]
    return out
