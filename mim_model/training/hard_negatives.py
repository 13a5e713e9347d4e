"""Hard negatives: the places where a network fires on no target, as places for training crops.

A *hard negative* is a predicted object (an 8-connected component of ``prob > threshold``)
that matches no target by the IRSTD rule (centroid closer than 3 px to a target's
centroid, :func:`~mim_model.training.metrics.unmatched_components`), one of the objects
whose pixels Fa counts, and that lies clear of every target (by more than ``clear_px``,
default 2): an object drawn beside a target (a target split in two, an outline that
spills) is an outline error, and the crops placed on targets already hold it. Most of a
trained network's false alarms are confident objects on structures that look like targets
at this scale (a rocket's trail, a crane's hook), shared by networks of other starts and
optimizers (docs/benchmarks.md, "Runs 46-49"); a uniform crop rarely lands on them.
``irscan find-hard-negatives`` records them for a split, and ``irscan train
--hard-negatives FILE --p-hard-negative P`` centres that share of the training crops that
are not synthetic on one of them (:class:`HardNegativePool`, used by
:class:`~mim_model.training.data.TrainCrops`).

File format (JSON, UTF-8)::

    {"format": "irscan-hard-negatives/1",
     "weights": "...", "split": "train", "threshold": 0.1, "refiner": true, "clear_px": 2,
     "points": {"<image id>": [[row_px, col_px, area_px, peak_prob], ...], ...}}

Rows and columns are the object's centroid in the image's own pixels (not the network's
rescaled grid). Several files may be given: their points are pooled by image id.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mim_model.errors import MiMError
from mim_model.training.data import DEFAULT_SPLIT_DIR, SirstSplit
from mim_model.training.metrics import unmatched_components

__all__ = [
    "FORMAT",
    "HardNegative",
    "HardNegativesError",
    "HardNegativePool",
    "find_hard_negatives",
    "hard_negatives_of_image",
    "read_hard_negatives",
    "write_hard_negatives",
]

log = logging.getLogger(__name__)

#: The ``format`` field of a hard-negatives file.
FORMAT = "irscan-hard-negatives/1"


class HardNegativesError(MiMError, ValueError):
    """A hard-negatives file or setting is unusable (message names the file or field)."""


@dataclass(frozen=True, slots=True)
class HardNegative:
    """One predicted object that matches no target.

    Attributes
    ----------
    row_px, col_px : float
        Centroid in the image's pixels.
    area_px : int
        Pixels of the object.
    peak_prob : float
        Highest probability inside it.
    """

    row_px: float
    col_px: float
    area_px: int
    peak_prob: float


def _check_clear_px(clear_px: int) -> None:
    if clear_px < 0:
        raise HardNegativesError(f"clear_px: expected an integer >= 0, got {clear_px}")


def hard_negatives_of_image(
    prob: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_], threshold: float, *, clear_px: int = 2
) -> list[HardNegative]:
    """The objects of ``prob > threshold`` that match no component of ``mask`` and lie clear of it.

    Parameters
    ----------
    prob : ndarray (H, W)
        Target probabilities at the image's size.
    mask : ndarray bool (H, W)
        The image's target mask.
    threshold : float
        Probability threshold in (0, 1).
    clear_px : int
        Leave out objects with a pixel within this many pixels (8-neighbourhood steps) of a
        target pixel; 0 keeps every unmatched object (all that Fa counts).

    Returns
    -------
    list of HardNegative
        In the metric's label order (raster order of each object's first pixel).

    Raises
    ------
    InputShapeError
        If the maps are not 2-D or differ in shape.
    HardNegativesError
        A negative ``clear_px``.
    """
    _check_clear_px(clear_px)
    prob = np.asarray(prob)
    found = unmatched_components(prob > threshold, mask)
    if not found.components:
        return []
    peaks = np.zeros(len(found.areas_px) + 1)
    np.maximum.at(peaks, found.labels.ravel(), prob.ravel().astype(np.float64))
    near_target = np.asarray(mask, bool)
    if clear_px > 0 and near_target.any():
        near_target = ndimage.binary_dilation(near_target, np.ones((3, 3), bool), iterations=clear_px)
    beside = set(np.unique(found.labels[near_target]).tolist())
    return [
        HardNegative(float(found.centroids_rc[k, 0]), float(found.centroids_rc[k, 1]),
                     int(found.areas_px[k]), float(peaks[k + 1]))
        for k in found.components if k + 1 not in beside
    ]


def find_hard_negatives(
    data_dir: str | os.PathLike,
    split: str,
    *,
    weights: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str = "auto",
    split_dir: str = DEFAULT_SPLIT_DIR,
    batch_size: int = 8,
    amp: bool = True,
    refine: bool = True,
    clear_px: int = 2,
) -> dict[str, Any]:
    """Run a network on a split and record its hard negatives (the file's content).

    Parameters
    ----------
    data_dir : path
        SIRST-layout data directory.
    split : str
        Split name under ``split_dir``, or a path to a split ``.txt`` file.
    weights : path, optional
        Safetensors weights; None: the packaged default.
    threshold : float, optional
        Probability threshold; None: the one stored with the weights. A threshold below the
        weights' own also records the objects the network is unsure of.
    device, split_dir, batch_size, amp
        As :func:`mim_model.training.evaluate.evaluate`.
    refine : bool
        Apply the outline refiner the weights carry, if any.
    clear_px : int
        As :func:`hard_negatives_of_image`.

    Returns
    -------
    dict
        The file's content (see the module docstring), plus ``n_points`` and ``n_images``
        (images with at least one point).

    Raises
    ------
    DatasetError
        Missing or empty split file, unreadable image, mask of another size.
    WeightsError
        Weights missing, unreadable or not matching the network.
    HardNegativesError
        A threshold outside (0, 1), a ``batch_size`` < 1 or a negative ``clear_px``.
    """
    from mim_model.training.inference import (
        check_inference_options,
        predict_probs,
        weights_input_scale,
        weights_threshold,
    )
    from mim_model.training.train import resolve_device
    from mim_model.weights import DEFAULT_WEIGHTS_PATH, load_model, load_refiner

    check_inference_options(threshold=threshold, batch_size=batch_size, error=HardNegativesError)
    _check_clear_px(clear_px)
    data = SirstSplit.load(data_dir, split, split_dir)
    dev = resolve_device(device)
    model = load_model(weights, device=dev)
    t = weights_threshold(model) if threshold is None else float(threshold)
    refiner = load_refiner(weights, device=dev) if refine else None
    probs = predict_probs(model, data.images01(), device=dev, amp=amp, batch_size=batch_size,
                          scale=weights_input_scale(model), refiner=refiner)
    points: dict[str, list[list[float]]] = {}
    for image_id, prob, mask in zip(data.ids, probs, data.masks, strict=True):
        found = hard_negatives_of_image(prob, mask, t, clear_px=clear_px)
        if found:
            points[image_id] = [[round(h.row_px, 2), round(h.col_px, 2), h.area_px, round(h.peak_prob, 4)]
                                for h in found]
    n_points = sum(len(p) for p in points.values())
    log.info("%d hard negatives in %d of %d images of %s (threshold %.2f)", n_points, len(points), len(data), split, t)
    return {"format": FORMAT, "weights": str(weights if weights is not None else DEFAULT_WEIGHTS_PATH),
            "split": split, "threshold": t, "refiner": refiner is not None, "clear_px": clear_px, "points": points,
            "n_points": n_points, "n_images": len(points)}


def write_hard_negatives(path: str | os.PathLike, content: Mapping[str, Any]) -> Path:
    """Write ``content`` (as :func:`find_hard_negatives` returns it) as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(content), indent=1) + "\n", encoding="utf-8")
    return path


def _points_of(path: Path, raw: object) -> dict[str, list[tuple[float, float]]]:
    """The validated ``points`` of one parsed file, as (row, col) per image id."""
    def bad(field: str, expected: str, got: object) -> HardNegativesError:
        return HardNegativesError(f"hard negatives {path}: {field}: expected {expected}, got {got!r}")

    if not isinstance(raw, dict):
        raise bad("top level", "a JSON object", type(raw).__name__)
    if raw.get("format") != FORMAT:
        raise bad("format", repr(FORMAT), raw.get("format"))
    points = raw.get("points")
    if not isinstance(points, dict):
        raise bad("points", "an object of image id -> list of [row, col, ...]", type(points).__name__)
    out: dict[str, list[tuple[float, float]]] = {}
    for image_id, rows in points.items():
        if not isinstance(rows, list):
            raise bad(f"points[{image_id!r}]", "a list of [row, col, ...]", rows)
        for point in rows:
            ok = (isinstance(point, list) and len(point) >= 2
                  and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                          for v in point[:2]))
            if not ok:
                raise bad(f"points[{image_id!r}]", "[row, col, ...] with row, col >= 0", point)
            out.setdefault(image_id, []).append((float(point[0]), float(point[1])))
    return out


def read_hard_negatives(paths: Iterable[str | os.PathLike]) -> dict[str, list[tuple[float, float]]]:
    """The points (row, col) of one or more files, pooled by image id.

    Raises
    ------
    HardNegativesError
        A missing or unreadable file, not JSON, another format, or a malformed point.
    """
    pooled: dict[str, list[tuple[float, float]]] = {}
    for p in paths:
        path = Path(p)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HardNegativesError(f"hard negatives {path}: expected a file, got none there") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HardNegativesError(f"hard negatives {path}: expected a JSON file, got {exc}") from None
        for image_id, pts in _points_of(path, raw).items():
            pooled.setdefault(image_id, []).extend(pts)
    return pooled


class HardNegativePool:
    """The hard negatives of a training split, for drawing crop centres.

    A draw picks an image with points uniformly, then one of its points uniformly, so that an
    image with many false objects does not crowd out the others.

    Parameters
    ----------
    points : mapping of image id -> sequence of (row, col)
        As :func:`read_hard_negatives` returns them; ids outside ``ids`` are ignored.
    ids : sequence of str
        The training split's ids, in its order (the dataset's indices).
    shapes : sequence of (int, int)
        The images' (H, W), to check that every point lies inside its image.

    Raises
    ------
    HardNegativesError
        No point lies in the split's images, or a point lies outside its image.
    """

    def __init__(self, points: Mapping[str, Sequence[tuple[float, float]]], ids: Sequence[str],
                 shapes: Sequence[tuple[int, int]]) -> None:
        self.by_index: list[tuple[int, npt.NDArray[np.float64]]] = []
        for index, (image_id, (h, w)) in enumerate(zip(ids, shapes, strict=True)):
            pts = np.asarray(points.get(image_id, ()), dtype=np.float64).reshape(-1, 2)
            outside = pts[(pts[:, 0] > h - 1) | (pts[:, 1] > w - 1)]
            if len(outside):
                raise HardNegativesError(
                    f"hard negatives of image {image_id}: expected points inside its {h} x {w} px, "
                    f"got (row, col) ({outside[0, 0]:g}, {outside[0, 1]:g})")
            if len(pts):
                self.by_index.append((index, pts))
        if not self.by_index:
            raise HardNegativesError(
                f"hard negatives: expected points in the training split's images, got none of its "
                f"{len(ids)} images among the {len(points)} images of the files")

    @property
    def n_images(self) -> int:
        """Images with at least one point."""
        return len(self.by_index)

    @property
    def n_points(self) -> int:
        """Points in all."""
        return sum(len(p) for _, p in self.by_index)

    def draw(self, rng: np.random.Generator) -> tuple[int, tuple[float, float]]:
        """A random ``(dataset index, (row_px, col_px))``."""
        index, pts = self.by_index[int(rng.integers(len(self.by_index)))]
        row, col = pts[int(rng.integers(len(pts)))]
        return index, (float(row), float(col))
