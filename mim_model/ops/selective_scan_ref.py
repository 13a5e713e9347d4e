"""Reference selective scan in plain PyTorch: a loop over the sequence, fp32 state.

Same signature and semantics as ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
(real-valued case). Slow; it is the definition that the fast paths are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref"]


def _expand_group(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, G, N, L) -> (B, dim, N, L), group g serving channels g*dim/G .. (g+1)*dim/G-1."""
    groups = x.shape[1]
    return x.repeat_interleave(dim // groups, dim=1)


def selective_scan_ref(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = <C_t, h_t> + D u_t.

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C either (dim, N) (fixed),
    (batch, N, L) (variable) or (batch, G, N, L) (variable, grouped: G divides dim);
    D and delta_bias (dim,). Returns y (batch, dim, L) in u's dtype, and the last state
    (batch, dim, N) when asked.
    """
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    A = A.float()
    is_variable_B = B.dim() >= 3
    is_variable_C = C.dim() >= 3
    B = B.float()
    C = C.float()
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if is_variable_B:
        B = _expand_group(B, dim)
    if is_variable_C:
        C = _expand_group(C, dim)
    state = u.new_zeros((batch, dim, A.shape[1]))
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if is_variable_B:
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    else:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    ys = []
    for t in range(length):
        state = deltaA[:, :, t] * state + deltaB_u[:, :, t]
        if is_variable_C:
            y = torch.einsum("bdn,bdn->bd", state, C[:, :, :, t])
        else:
            y = torch.einsum("bdn,dn->bd", state, C)
        ys.append(y)
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, state) if return_last_state else out
