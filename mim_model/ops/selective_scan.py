"""Selective-scan dispatcher: one entry point, several interchangeable backends.

Backends (all take mamba_ssm's ``selective_scan_fn`` arguments and give the same result):

============  ===================================================================
``"cuda"``    mamba_ssm's fused CUDA kernel (:mod:`.selective_scan_cuda`). Needs a
              GPU, CUDA tensors and ``pip install 'irscan[gpu]'``.
``"chunked"`` Fast pure PyTorch (:mod:`.selective_scan_chunked`): blocked,
              log-depth scan, no Python loop over the sequence. Any device,
              autograd. The CPU default. ``"fast"`` is accepted as an alias.
``"ref"``     The definition (:mod:`.selective_scan_ref`): a Python loop over the
              sequence. Slow; for tests and debugging.
``"auto"``    ``"cuda"`` when mamba_ssm's kernel imports and ``u`` is on a GPU,
              otherwise ``"chunked"``.
============  ===================================================================

The backend is chosen per call: ``backend=`` if given, else the environment variable
``IRSCAN_SCAN_BACKEND``, else ``"auto"``. The choice is cheap: mamba_ssm is imported at most
once (lazily, the first time a GPU tensor or ``"cuda"`` asks for it) and the outcome is
cached. :func:`scan_backends` reports which backends can run here and why not.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal, overload

import torch

from mim_model.ops import selective_scan_cuda as _cuda
from mim_model.ops.selective_scan_chunked import selective_scan_chunked
from mim_model.ops.selective_scan_ref import selective_scan_ref

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "ScanBackendInfo",
    "resolve_backend",
    "scan_backends",
    "selective_scan",
]

log = logging.getLogger(__name__)

#: Accepted values of ``backend=`` and of the environment variable.
BACKENDS: tuple[str, ...] = ("auto", "cuda", "chunked", "ref")
_ALIASES = {"fast": "chunked"}
#: Environment variable read when ``backend`` is None.
ENV_VAR = "IRSCAN_SCAN_BACKEND"

_logged_choices: set[tuple[str, str]] = set()


@dataclass(frozen=True, slots=True)
class ScanBackendInfo:
    """Whether one backend can run in this process, and why not."""

    name: str
    available: bool
    detail: str


def _requested(backend: str | None) -> str:
    """The canonical backend name asked for, from the argument or the environment."""
    source = "backend argument"
    if backend is None:
        backend = os.environ.get(ENV_VAR, "").strip() or "auto"
        source = f"environment variable {ENV_VAR}"
    name = backend.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(
            f"unknown selective scan backend {backend!r} (from the {source}); expected one of "
            f"{', '.join(BACKENDS)} (or the alias 'fast' for 'chunked'), given as backend= or "
            f"through the environment variable {ENV_VAR}"
        )
    return name


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """The concrete backend (``"cuda"``, ``"chunked"`` or ``"ref"``) a call would use.

    Parameters
    ----------
    backend : str or None
        One of :data:`BACKENDS` (or ``"fast"``); None reads ``IRSCAN_SCAN_BACKEND``.
    device : torch.device or str
        Device of the tensors to scan.

    Returns
    -------
    str
        ``"auto"`` resolved: ``"cuda"`` if mamba_ssm's kernel imports and ``device`` is a
        CUDA device, else ``"chunked"``. Other names are returned as they are (whether they
        can run is checked by the call itself).

    Raises
    ------
    ValueError
        If the name is not a known backend.
    """
    name = _requested(backend)
    if name != "auto":
        return name
    if torch.device(device).type == "cuda":
        if _cuda.cuda_kernel_available():
            return "cuda"
        key = ("auto-fallback", str(device))
        if key not in _logged_choices:
            _logged_choices.add(key)
            log.warning(
                "mamba_ssm's CUDA selective-scan kernel is unavailable (%s); using the chunked "
                "pure-PyTorch scan on %s, which is much slower; %s",
                _cuda.cuda_kernel_error(),
                device,
                _cuda.INSTALL_HINT,
            )
    return "chunked"


@overload
def selective_scan(
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
    backend: str | None = ...,
) -> torch.Tensor: ...


@overload
def selective_scan(
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
    backend: str | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def selective_scan(
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
    backend: str | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def selective_scan(
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
    backend: str | None = ...,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def selective_scan(
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
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = <C_t, h_t> + D u_t.

    Parameters
    ----------
    u, delta : torch.Tensor
        r(batch, dim, L).
    A : torch.Tensor
        r(dim, N).
    B, C : torch.Tensor
        r(dim, N) (fixed), r(batch, N, L) (variable) or r(batch, G, N, L) (variable,
        grouped; G divides dim).
    D, delta_bias : torch.Tensor or None
        r(dim).
    z : torch.Tensor or None
        r(batch, dim, L); the output is multiplied by silu(z).
    delta_softplus : bool
        Apply softplus to delta + delta_bias.
    return_last_state : bool
        Also return the last state r(batch, dim, N).
    backend : str or None
        ``"auto"``, ``"cuda"``, ``"chunked"`` (alias ``"fast"``) or ``"ref"``; None reads
        the environment variable ``IRSCAN_SCAN_BACKEND`` (default ``"auto"``).

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        y r(batch, dim, L) in u's dtype, and the last state when asked.

    Raises
    ------
    ValueError
        If ``backend`` (or the environment variable) names no backend.
    ScanBackendUnavailableError
        If ``"cuda"`` is asked for but mamba_ssm's kernel does not import (the message
        carries the import error and the install command) or the tensors are not on a GPU.
    InputShapeError
        If the shapes do not fit together (``"chunked"`` checks them).
    """
    name = resolve_backend(backend, u.device)
    key = (name, u.device.type)
    if key not in _logged_choices:
        _logged_choices.add(key)
        log.debug("selective scan: backend %r on %s", name, u.device.type)
    if name == "cuda":
        return _cuda.selective_scan_cuda(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    if name == "chunked":
        return selective_scan_chunked(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    out: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
    )
    return out


def scan_backends() -> dict[str, ScanBackendInfo]:
    """Which concrete backends can run in this process, and why not (for logs and the CLI).

    Importing mamba_ssm is attempted here (once per process) to report on ``"cuda"``.

    Returns
    -------
    dict of str to ScanBackendInfo
        Keys ``"cuda"``, ``"chunked"``, ``"ref"``; plus ``"auto"``, whose detail says what
        it picks for CPU and GPU tensors.
    """
    has_gpu = torch.cuda.is_available()
    kernel = _cuda.cuda_kernel_available()
    if kernel and has_gpu:
        cuda = ScanBackendInfo("cuda", True, "mamba_ssm selective_scan_cuda kernel imported")
    elif kernel:
        cuda = ScanBackendInfo(
            "cuda", False, "mamba_ssm kernel imported, but torch sees no CUDA device"
        )
    else:
        err = _cuda.cuda_kernel_error()
        reason = f"mamba_ssm kernel import failed ({type(err).__name__}: {err}); {_cuda.INSTALL_HINT}"
        cuda = ScanBackendInfo("cuda", False, reason)
    gpu_choice = "cuda" if kernel else "chunked"
    return {
        "auto": ScanBackendInfo(
            "auto", True, f"CPU tensors -> chunked; GPU tensors -> {gpu_choice}"
        ),
        "cuda": cuda,
        "chunked": ScanBackendInfo("chunked", True, "pure PyTorch, blocked log-depth scan, any device"),
        "ref": ScanBackendInfo("ref", True, "pure PyTorch loop over the sequence (slow, for tests)"),
    }
