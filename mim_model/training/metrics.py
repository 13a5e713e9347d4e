"""IRSTD metrics, standard definitions (spec section 5): IoU, nIoU, Pd and Fa.

All functions take binary maps: ``pred`` and ``target`` are boolean (or 0/1) arrays of
shape (H, W), row-major, at the image's real resolution (no padding).

Definitions
-----------
IoU
    Dataset level: the sums of ``|P & G|`` and ``|P | G|`` over all images, divided
    once at the end (ACM ``SigmoidMetric``). An empty total union gives 0.
nIoU
    Mean over images of ``|P & G| / (|P | G| + eps)`` (ACM ``SamplewiseSigmoidMetric``,
    eps = ``np.spacing(1)``). An image whose union is empty (no target, no prediction)
    therefore counts as **0**, as in ACM; every SIRST image has a target, so this never
    happens on SIRST.
Pd, Fa
    DNANet / BasicIRSTD algorithm. Per image, label P and G into 8-connected components
    (``scipy.ndimage.label`` with a 3x3 structure, equal to skimage ``connectivity=2``);
    labels are numbered in raster order of their first pixel. For each target component
    in label order, scan the predicted components not yet matched, in label order; the
    **first** whose centroid lies at Euclidean distance **< 3 px** from the target's
    centroid is its match and leaves the pool. Pd = matched targets / all targets.
    Fa = pixels of predicted components never matched / all image pixels (the real
    H*W of each image summed, not 256**2 per image as in DNANet's original).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mim_model.errors import InputShapeError

__all__ = [
    "ImageCounts",
    "IRSTDMetrics",
    "ThresholdSweep",
    "image_counts",
    "match_components",
    "unmatched_components",
    "Unmatched",
    "MATCH_DISTANCE_PX",
]

#: A predicted component matches a target when their centroids are closer than this.
MATCH_DISTANCE_PX = 3.0

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_EPS = float(np.spacing(1))


@dataclass(frozen=True, slots=True)
class ImageCounts:
    """Everything the four metrics need from one image (all counts are pixels or objects)."""

    intersection_px: int
    union_px: int
    n_targets: int
    n_matched: int
    false_alarm_px: int
    total_px: int


def _as_bool_2d(name: str, array: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise InputShapeError(f"{name}: expected a 2-D (H, W) map, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _components(
    binary: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Labels (H, W), centroids (n, 2) as (row, col) and areas (n,) of the 8-connected
    components, in label order (label k + 1 is component k)."""
    labels, n = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    if n == 0:
        return labels, np.zeros((0, 2)), np.zeros((0,), dtype=np.int64)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    rows, cols = np.indices(binary.shape)
    flat = labels.ravel()
    sum_r = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:]
    sum_c = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:]
    return labels, np.stack([sum_r / areas, sum_c / areas], axis=1), areas


@dataclass(frozen=True, slots=True)
class Unmatched:
    """The predicted components that match no target (the false alarms Fa counts).

    Attributes
    ----------
    labels : ndarray int32 (H, W)
        8-connected labels of the prediction (0: background; component k has label k + 1).
    components : tuple of int
        Indices k of the unmatched components, in label order.
    centroids_rc : ndarray float64 (n, 2)
        Centroids (row, col) of all predicted components.
    areas_px : ndarray int64 (n,)
        Areas of all predicted components.
    n_targets, n_matched : int
        Target components, and how many of them were matched.
    """

    labels: npt.NDArray[np.int32]
    components: tuple[int, ...]
    centroids_rc: npt.NDArray[np.float64]
    areas_px: npt.NDArray[np.int64]
    n_targets: int
    n_matched: int


def unmatched_components(
    pred: npt.ArrayLike, target: npt.ArrayLike, *, distance_px: float = MATCH_DISTANCE_PX
) -> Unmatched:
    """Match predicted to target components (first match wins) and keep what is left.

    Parameters
    ----------
    pred, target : array_like of bool, shape (H, W)
        Binary prediction and ground truth.
    distance_px : float
        A match needs centroid distance strictly below this, in pixels.

    Returns
    -------
    Unmatched

    Raises
    ------
    InputShapeError
        If the maps are not 2-D or differ in shape.
    """
    p = _as_bool_2d("pred", pred)
    g = _as_bool_2d("target", target)
    if p.shape != g.shape:
        raise InputShapeError(f"pred and target: expected equal shapes, got {p.shape} and {g.shape}")
    labels, pred_centroids, pred_areas = _components(p)
    _, target_centroids, _ = _components(g)
    unmatched = list(range(len(pred_areas)))
    n_matched = 0
    for tc in target_centroids:
        for pos, k in enumerate(unmatched):
            if math.dist(tc, pred_centroids[k]) < distance_px:
                del unmatched[pos]
                n_matched += 1
                break
    return Unmatched(labels, tuple(unmatched), pred_centroids, pred_areas, len(target_centroids), n_matched)


def match_components(
    pred: npt.ArrayLike, target: npt.ArrayLike, *, distance_px: float = MATCH_DISTANCE_PX
) -> tuple[int, int, int]:
    """The counts of :func:`unmatched_components` (same parameters and errors).

    Returns
    -------
    n_targets, n_matched, false_alarm_px : int
        Number of target components, how many were matched, and the pixel count of the
        predicted components left unmatched.
    """
    found = unmatched_components(pred, target, distance_px=distance_px)
    false_alarm_px = int(found.areas_px[list(found.components)].sum()) if found.components else 0
    return found.n_targets, found.n_matched, false_alarm_px


def image_counts(pred: npt.ArrayLike, target: npt.ArrayLike) -> ImageCounts:
    """Counts of one image for all four metrics (see the module docstring).

    Parameters
    ----------
    pred, target : array_like of bool, shape (H, W)
        Binary prediction and ground truth at the image's real size.

    Returns
    -------
    ImageCounts

    Raises
    ------
    InputShapeError
        If the maps are not 2-D or differ in shape.
    """
    p = _as_bool_2d("pred", pred)
    g = _as_bool_2d("target", target)
    n_targets, n_matched, fa_px = match_components(p, g)
    return ImageCounts(
        intersection_px=int(np.count_nonzero(p & g)),
        union_px=int(np.count_nonzero(p | g)),
        n_targets=n_targets,
        n_matched=n_matched,
        false_alarm_px=fa_px,
        total_px=int(p.size),
    )


class IRSTDMetrics:
    """Accumulates IoU, nIoU, Pd and Fa over a set of images.

    Examples
    --------
    >>> m = IRSTDMetrics()
    >>> m.update(pred, target)  # doctest: +SKIP
    >>> m.result()["iou"]  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._inter = 0
        self._union = 0
        self._niou_sum = 0.0
        self._n_images = 0
        self._n_targets = 0
        self._n_matched = 0
        self._fa_px = 0
        self._total_px = 0

    def add_counts(self, counts: ImageCounts) -> None:
        """Add one image's pre-computed counts."""
        self._inter += counts.intersection_px
        self._union += counts.union_px
        self._niou_sum += counts.intersection_px / (counts.union_px + _EPS)
        self._n_images += 1
        self._n_targets += counts.n_targets
        self._n_matched += counts.n_matched
        self._fa_px += counts.false_alarm_px
        self._total_px += counts.total_px

    def update(self, pred: npt.ArrayLike, target: npt.ArrayLike) -> ImageCounts:
        """Add one image.

        Parameters
        ----------
        pred, target : array_like of bool, shape (H, W)
            Binary prediction and ground truth, same shape, real image size.

        Returns
        -------
        ImageCounts
            This image's counts.

        Raises
        ------
        InputShapeError
            If the maps are not 2-D or differ in shape.
        """
        counts = image_counts(pred, target)
        self.add_counts(counts)
        return counts

    def result(self) -> dict[str, float | int]:
        """The metrics so far, as fractions (not %), with the raw counts.

        Returns
        -------
        dict
            ``iou``, ``niou``, ``pd``, ``fa`` (floats; 0 where nothing was seen) and the
            counts ``n_images``, ``n_targets``, ``n_matched``, ``false_alarm_px``,
            ``total_px``, ``intersection_px``, ``union_px``.
        """
        return {
            "iou": self._inter / (self._union + _EPS) if self._union else 0.0,
            "niou": self._niou_sum / self._n_images if self._n_images else 0.0,
            "pd": self._n_matched / self._n_targets if self._n_targets else 0.0,
            "fa": self._fa_px / self._total_px if self._total_px else 0.0,
            "n_images": self._n_images,
            "n_targets": self._n_targets,
            "n_matched": self._n_matched,
            "false_alarm_px": self._fa_px,
            "total_px": self._total_px,
            "intersection_px": self._inter,
            "union_px": self._union,
        }


class ThresholdSweep:
    """:class:`IRSTDMetrics` at several probability thresholds at once (``prob > t``).

    Parameters
    ----------
    thresholds : sequence of float
        Probability thresholds in (0, 1); a pixel is a target when ``prob > t``.
    """

    def __init__(self, thresholds: Sequence[float]) -> None:
        if not thresholds:
            raise ValueError("thresholds: expected at least one value, got none")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.metrics = {t: IRSTDMetrics() for t in self.thresholds}

    def update(self, prob: npt.ArrayLike, target: npt.ArrayLike) -> None:
        """Add one image: ``prob`` float (H, W) in [0, 1], ``target`` bool (H, W)."""
        p = np.asarray(prob)
        for t, m in self.metrics.items():
            m.update(p > t, target)

    def results(self) -> dict[float, dict[str, float | int]]:
        """Metrics per threshold."""
        return {t: m.result() for t, m in self.metrics.items()}

    def best(self, key: str = "iou") -> tuple[float, dict[str, float | int]]:
        """The threshold with the highest ``key`` (ties: the one closest to 0.5) and its metrics."""
        results = self.results()
        t_best = max(results, key=lambda t: (results[t][key], -abs(t - 0.5)))
        return t_best, results[t_best]
