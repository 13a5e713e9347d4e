"""Flip agreement: a detection stands only if every flipped pass sees it too.

The detector (network and, if the weights carry one, the outline refiner) runs on the image
and on its three flips (left-right, up-down, both; :data:`FLIP_AXES`), each answer flipped
back. The mask is the plain pass's (probability above the threshold); an 8-connected
component of it is kept only if every flipped answer also exceeds the threshold somewhere
inside that component. Outlines therefore come from the plain pass alone, and a target that
every pass finds keeps its full mask; what goes are the confident but unstable blobs the
network draws on clutter in one orientation and not in another. Four times the network's
compute. Judged on SIRST val (docs/benchmarks.md, "Flip agreement"): IoU up and false alarms
down by 29-82 % in every fit, but one or two weak targets lost in most fits of
some networks, so it is an option (``--flip-agreement`` of ``irscan evaluate`` and
``irscan predict``), off by default.

:func:`keep_agreed` is the pure part (numpy); :func:`predict_agreed` runs the passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mim_model.errors import InputShapeError, MiMError

__all__ = ["FLIP_AXES", "FlipAgreementError", "check_flip_options", "keep_agreed", "predict_agreed", "predict_masks"]


class FlipAgreementError(MiMError, ValueError):
    """Flip agreement was asked for together with something it cannot be combined with."""


#: numpy axes of an (H, W) image flipped for the three extra passes: left-right, up-down, both.
FLIP_AXES: tuple[tuple[int, ...], ...] = ((1,), (0,), (0, 1))

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_flip_options(*, flip_tta: bool, flip_agreement: bool) -> None:
    """Raise :class:`FlipAgreementError` for both at once: agreement checks the plain pass
    against each flip, which averaging the flips into one answer leaves no room for."""
    if flip_tta and flip_agreement:
        raise FlipAgreementError("flip_agreement: expected without flip_tta (--tta-flips), got both")


def keep_agreed(
    prob: npt.NDArray[np.floating], flipped_probs: Sequence[npt.NDArray[np.floating]], threshold: float,
    min_seen: int | None = None,
) -> npt.NDArray[np.bool_]:
    """The mask ``prob > threshold`` less its components that other answers miss: that any
    one misses, or with ``min_seen`` that fewer than ``min_seen`` of them see.

    Parameters
    ----------
    prob : ndarray (H, W)
        Probabilities of the plain pass.
    flipped_probs : sequence of ndarray (H, W)
        Probabilities of the other passes, already flipped back onto the image's grid.
    threshold : float
        One threshold for all passes (the weights').
    min_seen : int, optional
        How many of ``flipped_probs`` must see a component (1 to their number); None: all.

    Returns
    -------
    ndarray of bool (H, W)
        The components of ``prob > threshold`` inside which every ``flipped_probs`` map (or
        ``min_seen`` of them) also exceeds ``threshold`` at one pixel at least.

    Raises
    ------
    InputShapeError
        If a map is not 2-D or the shapes differ.
    FlipAgreementError
        If ``min_seen`` is not between 1 and the number of ``flipped_probs``.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise InputShapeError(f"prob: expected a 2-D (H, W) map, got shape {prob.shape}")
    if min_seen is not None and not 1 <= min_seen <= len(flipped_probs):
        raise FlipAgreementError(f"min_seen: expected 1 to {len(flipped_probs)} (the other answers), got {min_seen}")
    needed = len(flipped_probs) if min_seen is None else min_seen
    mask = prob > threshold
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n == 0:
        return mask
    seen_by = np.zeros(n + 1, dtype=np.int32)
    for k, other in enumerate(flipped_probs):
        other = np.asarray(other)
        if other.shape != prob.shape:
            raise InputShapeError(f"flipped_probs[{k}]: expected shape {prob.shape}, got {other.shape}")
        hits = np.bincount(labels[other > threshold], minlength=n + 1)
        seen_by += hits > 0
    kept = seen_by >= needed
    kept[0] = False
    return kept[labels]


def predict_agreed(
    probabilities: Callable[[list[npt.NDArray[np.float32]]], list[npt.NDArray[np.float32]]],
    images: Sequence[npt.NDArray[np.float32]],
    threshold: float,
) -> tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.bool_]]]:
    """Plain probabilities and flip-agreed masks of ``images``.

    Parameters
    ----------
    probabilities : callable
        Maps a list of (H, W) images to their probability maps (e.g.
        :func:`mim_model.training.inference.predict_probs` with the model, refiner and
        device bound); called four times, once plain and once per :data:`FLIP_AXES`.
    images : sequence of ndarray float32 (H, W)
    threshold : float

    Returns
    -------
    probs, masks : list of ndarray
        The plain pass's probabilities and the masks :func:`keep_agreed` leaves.
    """
    plain = probabilities(list(images))
    flipped: list[list[npt.NDArray[np.float32]]] = []
    for axes in FLIP_AXES:
        answers = probabilities([np.ascontiguousarray(np.flip(img, axes)) for img in images])
        flipped.append([np.flip(p, axes) for p in answers])
    masks = [keep_agreed(p, [f[i] for f in flipped], threshold) for i, p in enumerate(plain)]
    return plain, masks


def predict_masks(
    probabilities: Callable[[list[npt.NDArray[np.float32]]], list[npt.NDArray[np.float32]]],
    images: Sequence[npt.NDArray[np.float32]],
    threshold: float,
    *,
    flip_agreement: bool,
) -> tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.bool_]]]:
    """Probabilities and masks of ``images``: ``probabilities > threshold``, or with
    ``flip_agreement`` the masks of :func:`predict_agreed` (same arguments as it)."""
    if flip_agreement:
        return predict_agreed(probabilities, images, threshold)
    probs = probabilities(list(images))
    return probs, [p > threshold for p in probs]
