"""CUDA selective scan: a thin wrapper over mamba_ssm's fused kernel.

This is the only module of the repository that imports ``mamba_ssm``, and it does so
lazily, on first use, so that importing :mod:`mim_model` never needs mamba_ssm, Triton or a
GPU. The outcome of the import is cached, including the exception when it fails, so that
the dispatcher (:mod:`mim_model.ops.selective_scan`) can report why the backend is missing.

Two imports must both succeed:

- ``selective_scan_cuda``: the compiled extension built by mamba-ssm's setup (on mamba_ssm
  HEAD after 2.3.2.post1 the build is opt-in, ``MAMBA_KEEP_CUDA_BUILD=TRUE``);
- ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``: its autograd wrapper.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from mim_model.errors import ScanBackendUnavailableError

__all__ = [
    "INSTALL_HINT",
    "cuda_kernel_error",
    "cuda_kernel_available",
    "selective_scan_cuda",
]

log = logging.getLogger(__name__)

#: How to get the kernel; quoted in every "unavailable" error.
INSTALL_HINT = (
    "install it with `pip install 'irscan[gpu]'` (this builds mamba-ssm from source: it needs "
    "nvcc and a CUDA build of torch already installed; add --no-build-isolation if the build "
    "cannot find torch), or use the pure-PyTorch backend: backend='chunked' or "
    "IRSCAN_SCAN_BACKEND=chunked"
)


@functools.cache
def _probe() -> tuple[Callable[..., Any] | None, BaseException | None]:
    """Import mamba_ssm's kernel once: (selective_scan_fn, None) or (None, the import error)."""
    try:
        importlib.import_module("selective_scan_cuda")
        interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except (ImportError, OSError) as err:  # OSError: a broken .so (undefined symbol, CUDA libs)
        log.debug("mamba_ssm selective scan kernel unavailable: %r", err)
        return None, err
    fn: Callable[..., Any] = interface.selective_scan_fn
    return fn, None


def cuda_kernel_available() -> bool:
    """Whether mamba_ssm's CUDA selective-scan kernel imports here (cached)."""
    return _probe()[0] is not None


def cuda_kernel_error() -> BaseException | None:
    """The exception raised by importing mamba_ssm's kernel, or None if it imports (cached)."""
    return _probe()[1]


def _unavailable_message() -> str:
    err = cuda_kernel_error()
    return (
        "selective scan backend 'cuda' is unavailable: mamba_ssm's CUDA kernel failed to import "
        f"({type(err).__name__}: {err}); {INSTALL_HINT}"
    )


def selective_scan_cuda(
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
    """mamba_ssm's ``selective_scan_fn`` (same signature and semantics as the reference).

    Parameters
    ----------
    u, delta : torch.Tensor
        r(batch, dim, L), on a CUDA device; float32, float16 or bfloat16.
    A : torch.Tensor
        r(dim, N).
    B, C : torch.Tensor
        r(dim, N), r(batch, N, L) or r(batch, G, N, L).
    D, delta_bias : torch.Tensor or None
        r(dim), float32.
    z : torch.Tensor or None
        r(batch, dim, L).
    delta_softplus, return_last_state : bool
        As in :func:`mim_model.ops.selective_scan_ref.selective_scan_ref`.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        y r(batch, dim, L), and the last state r(batch, dim, N) when asked (mamba_ssm does
        not back-propagate through the last state).

    Raises
    ------
    ScanBackendUnavailableError
        If mamba_ssm's kernel does not import (the message carries the import error and the
        install command), or if ``u`` is not on a CUDA device.
    """
    fn, err = _probe()
    if fn is None:
        raise ScanBackendUnavailableError(_unavailable_message()) from err
    if not u.is_cuda:
        raise ScanBackendUnavailableError(
            f"selective scan backend 'cuda' needs CUDA tensors, but u is on {u.device}; "
            "move the model and inputs to a GPU, or use backend='auto' or 'chunked' on CPU"
        )
    out: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = fn(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
    )
    return out
