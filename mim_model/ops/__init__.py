"""Selective-scan operators of MiM-ISTD's SS2D (spec section 2.4).

- :func:`selective_scan`: the dispatcher every caller should use; backend ``auto`` (default),
  ``cuda``, ``chunked`` (alias ``fast``) or ``ref``, or the env var ``IRSCAN_SCAN_BACKEND``.
- :func:`selective_scan_chunked`: fast pure-PyTorch scan (any device, autograd).
- :func:`selective_scan_ref`: the definition, a loop over the sequence.
- :func:`scan_backends`: which backends can run here, and why not.

mamba_ssm is imported only by :mod:`mim_model.ops.selective_scan_cuda`, lazily.
"""

from mim_model.ops.selective_scan import (
    BACKENDS,
    ENV_VAR,
    ScanBackendInfo,
    resolve_backend,
    scan_backends,
    selective_scan,
)
from mim_model.ops.selective_scan_chunked import selective_scan_chunked
from mim_model.ops.selective_scan_ref import selective_scan_ref

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "ScanBackendInfo",
    "resolve_backend",
    "scan_backends",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]
