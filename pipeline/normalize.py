"""Per-scene normalisation of band values to [0, 1], the range the model was trained on.

Why [0, 1]
----------
MiM-ISTD is trained on 8-bit infrared images (SIRST) converted to float and divided by 255,
so its inputs are in [0, 1] before the ImageNet mean/std step. A geospatial scene is in sensor
units (uint16 reflectance x 1e4, DN, Kelvin, radiance...), so we map it linearly onto [0, 1]
once per scene, with the same mapping for every tile: tiles of one scene are then comparable
and no seam appears where a per-tile stretch would differ. The ImageNet normalisation and the
grey-to-3-channel replication belong to the model (``mim_model``) and are **not** done here.

Modes (:class:`NormalizationSpec`)
----------------------------------
``"percentile"`` (default)
    ``low``/``high`` are the ``low_pct``/``high_pct`` percentiles (default 0.5 % and 99.99 %)
    of the scene's valid pixels. They are computed from a decimated read (long side at most
    ``sample_max_px``, default 2048; GDAL serves it from overviews where the file has them),
    never from the whole scene into memory, so memory is bounded whatever the scene size. (A
    file *without* overviews still has its blocks visited once by GDAL to pick the samples,
    streamed through GDAL's block cache; build overviews, ``gdaladdo``, to make large scenes
    cheap.) A high upper percentile keeps small bright targets (a few pixels) from being
    clipped flat.
``"fixed"``
    ``low = min_value``, ``high = max_value`` as given (e.g. 0..10000 for Sentinel-2 L1C).
``"none"``
    The scene is already in [0, 1]: ``low = 0``, ``high = 1`` (values are only clipped).
    For float scenes only: an integer scene would map every value above 0 to 1, so
    :func:`check_scene` refuses it.

:func:`apply` computes ``clip((v - low) / (high - low), 0, 1)`` in float32 and replaces nodata
(NaN; :mod:`pipeline.scene` returns every nodata pixel as NaN, including a float band's NaN and
+/-inf values) by ``fill``: the normalised median of the sample, so nodata looks like ordinary
background to the model instead of a dark hole whose edge could look like a target. A scene
with ``high <= low`` (constant) maps to 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from pipeline.errors import InputError, NormalizationError
from pipeline.scene import SceneInfo, read_decimated

__all__ = [
    "NormalizationMode",
    "NormalizationSpec",
    "NormalizationStats",
    "stats_from_sample",
    "compute_stats",
    "check_scene",
    "apply",
]

log = logging.getLogger(__name__)

NormalizationMode = Literal["percentile", "fixed", "none"]
_MODES: tuple[str, ...] = ("percentile", "fixed", "none")


@dataclass(frozen=True, slots=True)
class NormalizationSpec:
    """How a scene is mapped onto [0, 1]; see the module docstring.

    Parameters
    ----------
    mode : {"percentile", "fixed", "none"}
    low_pct, high_pct : float
        Percentiles (0..100, ``low_pct < high_pct``) for ``"percentile"``.
    min_value, max_value : float or None
        Required for ``"fixed"`` (``min_value < max_value``), ignored otherwise.
    sample_max_px : int
        Long side of the decimated read used for percentiles, >= 16.

    Raises
    ------
    InputError
        Unknown mode, percentiles out of range or in the wrong order, missing or inverted
        fixed bounds. The message names the field.
    """

    mode: NormalizationMode = "percentile"
    low_pct: float = 0.5
    high_pct: float = 99.99
    min_value: float | None = None
    max_value: float | None = None
    sample_max_px: int = 2048

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise InputError(f"normalization: mode must be one of {_MODES}, got {self.mode!r}")
        if self.mode == "percentile":
            if not (0.0 <= self.low_pct < self.high_pct <= 100.0):
                raise InputError(
                    "normalization: need 0 <= low_pct < high_pct <= 100,"
                    f" got low_pct={self.low_pct}, high_pct={self.high_pct}"
                )
        if self.mode == "fixed":
            if self.min_value is None or self.max_value is None:
                raise InputError(
                    "normalization: mode 'fixed' needs min_value and max_value,"
                    f" got min_value={self.min_value}, max_value={self.max_value}"
                )
            if not (
                math.isfinite(self.min_value)
                and math.isfinite(self.max_value)
                and self.min_value < self.max_value
            ):
                raise InputError(
                    "normalization: need finite min_value < max_value,"
                    f" got min_value={self.min_value}, max_value={self.max_value}"
                )
        if self.sample_max_px < 16:
            raise InputError(
                f"normalization: sample_max_px must be >= 16, got {self.sample_max_px}"
            )


@dataclass(frozen=True, slots=True)
class NormalizationStats:
    """The linear map of one scene: ``clip((v - low) / (high - low), 0, 1)``; NaN -> ``fill``.

    Attributes
    ----------
    low, high : float
        Source values mapped to 0 and 1.
    fill : float
        Normalised value (in [0, 1]) that replaces nodata.
    mode : str
        The spec's mode, for the run report.
    n_samples : int
        Valid pixels in the sample (0 for ``"fixed"``/``"none"`` modes, which read nothing).
    """

    low: float
    high: float
    fill: float = 0.0
    mode: str = "percentile"
    n_samples: int = 0

    def apply(self, pixels: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """See :func:`apply`."""
        return apply(pixels, self)

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain dict for the run report."""
        return {
            "mode": self.mode,
            "low": self.low,
            "high": self.high,
            "fill": self.fill,
            "n_samples": self.n_samples,
        }


def _normalised(value: float, low: float, high: float) -> float:
    if not high > low:
        return 0.0
    return float(min(1.0, max(0.0, (value - low) / (high - low))))


def stats_from_sample(
    pixels: npt.ArrayLike, valid: npt.ArrayLike | None, spec: NormalizationSpec
) -> NormalizationStats:
    """Stats from a (decimated) sample of the scene. Pure.

    Parameters
    ----------
    pixels : array_like of float, any shape
        Sample values; NaN and +/-inf count as nodata.
    valid : array_like of bool, same shape, or None
        Valid-pixel mask (None: every finite pixel is valid).
    spec : NormalizationSpec

    Returns
    -------
    NormalizationStats
        For a sample without any valid pixel (an all-nodata scene), ``low=0, high=1,
        fill=0`` and ``n_samples=0``, with a logged warning.
    """
    if spec.mode == "none":
        return NormalizationStats(0.0, 1.0, 0.0, "none", 0)
    values = np.asarray(pixels, dtype=np.float64)
    keep = np.isfinite(values)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    sample = values[keep]
    if spec.mode == "fixed":
        assert spec.min_value is not None and spec.max_value is not None
        low, high = float(spec.min_value), float(spec.max_value)
        median = float(np.median(sample)) if sample.size else low
        return NormalizationStats(
            low, high, _normalised(median, low, high), "fixed", int(sample.size)
        )
    if sample.size == 0:
        log.warning("normalization: sample has no valid pixel; using low=0 high=1")
        return NormalizationStats(0.0, 1.0, 0.0, "percentile", 0)
    low, median, high = (
        float(v) for v in np.percentile(sample, [spec.low_pct, 50.0, spec.high_pct])
    )
    if not high > low:
        log.warning("normalization: scene is constant (%g); it maps to 0", low)
    return NormalizationStats(
        low, high, _normalised(median, low, high), "percentile", int(sample.size)
    )


def check_scene(scene: SceneInfo, spec: NormalizationSpec) -> None:
    """Refuse a scene the spec cannot map: mode ``"none"`` (values taken as they are, in
    [0, 1]) on an integer band, whose every value above 0 would be clipped to 1.

    Raises
    ------
    NormalizationError
        Mode ``"none"`` and an integer dtype; the message names the scene and the dtype.
    """
    if spec.mode == "none" and np.dtype(scene.dtype).kind in "ui":
        raise NormalizationError(
            f"{scene.path}: norm none: expected a float scene with values in 0..1, got dtype {scene.dtype}"
            " (every value above 0 would become 1); use norm percentile or fixed"
        )


def compute_stats(scene: SceneInfo, spec: NormalizationSpec) -> NormalizationStats:
    """Stats of a scene from a decimated read (nothing is read for mode ``"none"``).

    Parameters
    ----------
    scene : SceneInfo
        From :func:`pipeline.scene.open_scene`.
    spec : NormalizationSpec

    Returns
    -------
    NormalizationStats

    Raises
    ------
    SceneError
        The decimated read fails.
    """
    if spec.mode == "none":
        return stats_from_sample(np.empty(0), None, spec)
    sample = read_decimated(scene, spec.sample_max_px)
    stats = stats_from_sample(sample.pixels, sample.valid, spec)
    log.info(
        "%s: normalization %s low=%g high=%g fill=%.3f from %d samples",
        scene.name,
        stats.mode,
        stats.low,
        stats.high,
        stats.fill,
        stats.n_samples,
    )
    return stats


def apply(pixels: npt.ArrayLike, stats: NormalizationStats) -> npt.NDArray[np.float32]:
    """Map source values onto [0, 1] (float32), clipped; NaN (nodata) becomes ``stats.fill``.

    Parameters
    ----------
    pixels : array_like of float, any shape
        Source values, e.g. :attr:`pipeline.scene.TileData.pixels`.
    stats : NormalizationStats

    Returns
    -------
    ndarray of float32, same shape, values in [0, 1]
    """
    x = np.asarray(pixels, dtype=np.float32)
    if stats.high > stats.low:
        scale = np.float32(1.0 / (stats.high - stats.low))
        out = (x - np.float32(stats.low)) * scale
    else:
        out = np.zeros_like(x)
    np.clip(out, 0.0, 1.0, out=out)
    nan = np.isnan(out)
    if nan.any():
        out[nan] = np.float32(stats.fill)
    return out
