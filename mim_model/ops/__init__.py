"""Selective-scan operators (provisional: the dispatcher lands in selective_scan.py)."""

from mim_model.ops.selective_scan_ref import selective_scan_ref

__all__ = ["selective_scan_ref", "selective_scan"]


def selective_scan(*args, **kwargs):
    return selective_scan_ref(*args, **kwargs)
