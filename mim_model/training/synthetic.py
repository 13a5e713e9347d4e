"""Synthetic training samples: real SIRST targets pasted onto real satellite IR backgrounds.

SIRST's backgrounds are mostly sky, cloud and sea in 8-bit frames; irscan scans SWIR and
thermal satellite scenes, mostly textured land. A network trained on SIRST alone misses
targets on land (``docs/benchmarks.md``). With probability ``p_synthetic`` a training crop
is made here instead:

1. a background: with probability ``p_clutter`` a freshly drawn procedural land clutter
   (:mod:`mim_model.training.clutter`), else a random window of one of the given rasters
   (GeoTIFF or any image PIL reads), each stretched onto [0, 1] by its 0.5 and 99.99
   percentiles, as ``irscan scan`` normalises a scene by default; then rescaled like a
   SIRST crop (the network's input scale times a log-uniform factor) and flipped or turned;
2. 1 to ``max_targets`` targets: connected components of the *train* split's masks with
   their intensity profile over the local background (``TargetChip``), pasted at random
   places with a peak contrast drawn uniformly from ``contrast_range`` (fractions of the
   [0, 1] range) above the local background; the mask is the chips' masks. Where they are
   pasted is ``paste_at``: ``"network"`` rescales each chip by the crop's factor and pastes
   it onto the already rescaled background (runs 1-14), so a target's edges are as sharp
   as the network's pixels while the background's are blurred by the rescaling;
   ``"native"`` pastes the chips at the background's own resolution and rescales the
   composite (image bilinear, mask bilinear > 0.5), as a scanned scene with a real target
   reaches the network: target and ground blurred alike, no edge to tell them apart by.
   A share ``busy_share`` of the targets is instead put on busy ground: the busiest of 16
   random places (highest standard deviation of the background in the chip's box grown by
   16 px of the scene, about the 33 x 33 px surroundings of a small target), with a peak
   contrast of ``busy_scr_range`` times that deviation (its signal-to-clutter ratio),
   clipped to ``contrast_range``: the targets the scan weights miss on land
   (``docs/benchmarks.md``, "Where the scan weights miss").

Keep the backgrounds used for training apart from those of any evaluation scene
(the scan accuracy test uses the Sentinel-2 B12 crop of the shared data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from mim_model.training.clutter import clutter_background
from mim_model.training.data import DatasetError, SirstSplit, random_d4
from mim_model.training.preprocess import STRETCH_PCT

__all__ = [
    "LAND_VAL_SPEC",
    "PASTE_AT",
    "SyntheticSource",
    "SyntheticSpec",
    "TargetChip",
    "extract_chips",
    "land_validation_crops",
    "load_background",
    "synthetic_sample",
]

log = logging.getLogger(__name__)



#: Where synthetic targets are pasted: onto the rescaled crop, or at native resolution.
PASTE_AT = ("network", "native")


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticSpec:
    """Settings of the synthetic samples.

    Attributes
    ----------
    p_synthetic : float
        Probability that a training crop is synthetic.
    contrast_range : (float, float)
        Peak contrast of a pasted target above its local background, fraction of [0, 1].
    max_targets : int
        Targets pasted per crop: 1 to this many, uniform.
    p_clutter : float
        Share of the synthetic crops drawn on procedural land clutter instead of a raster
        background (1: rasters are not needed).
    paste_at : {"network", "native"}
        Paste the chips onto the background rescaled to the network's input (``"network"``)
        or at the background's own resolution before the rescaling (``"native"``, as a
        real scene is scanned); see the module docstring.
    busy_share : float
        Share of the pasted targets put on the busiest of 16 random places, with a contrast
        set by ``busy_scr_range`` (0: every target at a uniform random place).
    busy_scr_range : (float, float)
        Signal-to-clutter ratio of a target on busy ground: its peak contrast over the
        standard deviation of its surroundings, drawn uniformly.
    """

    p_synthetic: float = 0.0
    contrast_range: tuple[float, float] = (0.15, 0.8)
    max_targets: int = 4
    p_clutter: float = 0.0
    paste_at: str = "network"
    busy_share: float = 0.0
    busy_scr_range: tuple[float, float] = (2.0, 4.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_synthetic <= 1.0:
            raise ValueError(f"p_synthetic: expected a probability in [0, 1], got {self.p_synthetic}")
        lo, hi = self.contrast_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"contrast_range: expected 0 < low <= high <= 1, got {self.contrast_range}")
        if self.max_targets < 1:
            raise ValueError(f"max_targets: expected an integer >= 1, got {self.max_targets}")
        if not 0.0 <= self.p_clutter <= 1.0:
            raise ValueError(f"p_clutter: expected a probability in [0, 1], got {self.p_clutter}")
        if self.paste_at not in PASTE_AT:
            raise ValueError(f"paste_at: expected one of {', '.join(PASTE_AT)}, got {self.paste_at!r}")
        if not 0.0 <= self.busy_share <= 1.0:
            raise ValueError(f"busy_share: expected a share in [0, 1], got {self.busy_share}")
        lo, hi = self.busy_scr_range
        if not 0.0 < lo <= hi:
            raise ValueError(f"busy_scr_range: expected 0 < low <= high, got {self.busy_scr_range}")

    @property
    def needs_rasters(self) -> bool:
        """Whether some synthetic crops are drawn on raster backgrounds."""
        return self.p_synthetic > 0 and self.p_clutter < 1


@dataclass(frozen=True)
class TargetChip:
    """One real target: contrast over its local background (grey/255 units, zero outside
    the mask) and its mask, cut from a SIRST image with a 3 px margin; ``source`` is the
    image id."""

    contrast: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
    source: str = ""


def extract_chips(split: SirstSplit, min_area_px: int = 2) -> list[TargetChip]:
    """Every 8-connected mask component of a split's images with a visible profile."""
    chips = []
    for image_id, image, mask in zip(split.ids, split.images, split.masks, strict=True):
        grey = image.astype(np.float32) / 255.0
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            r0, r1 = max(box[0].start - 3, 0), min(box[0].stop + 3, grey.shape[0])
            c0, c1 = max(box[1].start - 3, 0), min(box[1].stop + 3, grey.shape[1])
            part = labels[r0:r1, c0:c1] == label
            if part.sum() < min_area_px:
                continue
            window = grey[r0:r1, c0:c1]
            ring = ~ndimage.binary_dilation(part, iterations=1)
            background = float(np.median(window[ring])) if ring.any() else 0.0
            contrast = np.where(part, np.clip(window - background, 0.0, None), 0.0).astype(np.float32)
            if contrast.max() > 0.02:  # no brighter than its surroundings: not a pasteable target
                chips.append(TargetChip(contrast, part, image_id))
    if not chips:
        raise DatasetError("synthetic samples: no target chip found in the train split's masks")
    return chips


def load_background(path: str | Path) -> npt.NDArray[np.float32]:
    """Band 1 of a raster (rasterio for GeoTIFF/JP2/..., else PIL), stretched onto [0, 1]
    by its 0.5 and 99.99 percentiles over valid pixels (nodata and NaN become the median)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: background raster not found")
    values = _read_with_rasterio(path)
    if values is None:
        try:
            values = np.asarray(Image.open(path), dtype=np.float64)
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"{path}: not a readable raster ({exc})") from None
        if values.ndim == 3:
            values = values[..., 0]
    valid = np.isfinite(values)
    if valid.sum() < 64 * 64:
        raise DatasetError(f"{path}: background raster: expected at least 4096 valid pixels, got {int(valid.sum())}")
    low, high = np.percentile(values[valid], STRETCH_PCT)
    if high <= low:
        raise DatasetError(f"{path}: background raster is constant (value {low})")
    out = np.where(valid, (values - low) / (high - low), np.nan)
    out = np.where(valid, out, np.nanmedian(out))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _read_with_rasterio(path: Path) -> npt.NDArray[np.float64] | None:
    """Band 1 as float64 with nodata as NaN, or None where rasterio is absent or cannot read it."""
    try:
        import rasterio
        from rasterio.errors import RasterioIOError
    except ImportError:
        return None
    try:
        with rasterio.open(path) as dataset:
            band = dataset.read(1, masked=True)
    except RasterioIOError:
        return None
    return np.ma.filled(band.astype(np.float64), np.nan)


def _resize(array: npt.NDArray[np.float32], shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    return np.array(Image.fromarray(array).resize((shape[1], shape[0]), Image.Resampling.BILINEAR), np.float32)


def _raster_window(
    backgrounds: list[npt.NDArray[np.float32]], side: int, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """A (side, side) window of a background chosen with probability by its size."""
    sizes = np.array([b.size for b in backgrounds], np.float64)
    background = backgrounds[int(rng.choice(len(backgrounds), p=sizes / sizes.sum()))]
    h, w = background.shape
    r0 = int(rng.integers(0, max(1, h - side + 1)))
    c0 = int(rng.integers(0, max(1, w - side + 1)))
    window = background[r0 : r0 + side, c0 : c0 + side]
    if window.shape != (side, side):  # a background smaller than the window: mirror it out
        window = np.pad(window, ((0, side - window.shape[0]), (0, side - window.shape[1])), mode="symmetric")
    return window


def synthetic_sample(
    backgrounds: list[npt.NDArray[np.float32]],
    chips: list[TargetChip],
    crop_px: int,
    spec: SyntheticSpec,
    rng: np.random.Generator,
    scale: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """One synthetic crop (see the module docstring): image01 and mask01, (crop_px, crop_px).

    ``scale`` is the resize factor of this crop (the network's input scale times the drawn
    augmentation factor): a background window of ``crop_px / scale`` px is resized to
    ``crop_px`` and every chip by ``scale``.
    """
    side = max(8, round(crop_px / scale))
    if not backgrounds or (spec.p_clutter > 0 and rng.random() < spec.p_clutter):
        window = clutter_background(max(side, 64), rng)[:side, :side]
    else:
        window = _raster_window(backgrounds, side, rng)
    window = np.ascontiguousarray(window)
    if spec.paste_at == "native":
        image = window.copy()
        mask = _paste_chips(image, chips, spec, rng, 1.0)
        if side != crop_px:
            image = _resize(image, (crop_px, crop_px))
            resized = _resize(mask, (crop_px, crop_px))
            mask = (resized > 0.5).astype(np.float32)
            mask[_vanished_peaks(resized, mask)] = 1.0
    else:
        image = _resize(window, (crop_px, crop_px)) if side != crop_px else window.copy()
        mask = _paste_chips(image, chips, spec, rng, scale)
    image, mask = random_d4(image, mask, rng)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask, np.float32)


def _paste_chips(
    image: npt.NDArray[np.float32], chips: list[TargetChip], spec: SyntheticSpec, rng: np.random.Generator,
    scale: float,
) -> npt.NDArray[np.float32]:
    """Paste 1 to ``spec.max_targets`` chips, each rescaled by ``scale``, into ``image`` (in
    place) at random places (``spec.busy_share`` of them on busy ground); return their 0/1 mask."""
    side_r, side_c = image.shape
    mask = np.zeros(image.shape, np.float32)
    lo, hi = spec.contrast_range
    for _ in range(int(rng.integers(1, spec.max_targets + 1))):
        chip = chips[int(rng.integers(len(chips)))]
        ch, cw = chip.mask.shape
        size = (max(1, round(ch * scale)), max(1, round(cw * scale)))
        profile = _resize(chip.contrast, size)
        chip_mask = _resize(chip.mask.astype(np.float32), size) > 0.5
        if not chip_mask.any():  # a tiny target vanished on shrinking: keep its peak pixel
            chip_mask = profile >= profile.max()
        if size[0] >= side_r or size[1] >= side_c:
            continue
        # rng.random() only when busy targets are asked for: older recipes draw as before
        if spec.busy_share > 0 and rng.random() < spec.busy_share:
            tr, tc, clutter_std = _busiest_place(image, size, rng, margin_px=max(1, round(_BUSY_MARGIN_PX * scale)))
            peak = float(np.clip(rng.uniform(*spec.busy_scr_range) * clutter_std, lo, hi))
        else:
            tr = int(rng.integers(0, side_r - size[0] + 1))
            tc = int(rng.integers(0, side_c - size[1] + 1))
            peak = float(rng.uniform(lo, hi))
        region = image[tr : tr + size[0], tc : tc + size[1]]
        local = float(np.median(region[~chip_mask])) if (~chip_mask).any() else float(np.median(region))
        shaped = np.where(chip_mask, profile / max(float(profile[chip_mask].max()), 1e-6), 0.0)
        region[chip_mask] = np.maximum(region[chip_mask], np.minimum(local + shaped[chip_mask] * peak, 1.0))
        mask[tr : tr + size[0], tc : tc + size[1]][chip_mask] = 1.0
    return mask


#: Places drawn for a target on busy ground, and its surroundings' margin in scene pixels.
_BUSY_CANDIDATES = 16
_BUSY_MARGIN_PX = 16


def _busiest_place(
    image: npt.NDArray[np.float32], size: tuple[int, int], rng: np.random.Generator, margin_px: int
) -> tuple[int, int, float]:
    """Of ``_BUSY_CANDIDATES`` random top-left corners for a box of ``size``, the one whose box
    grown by ``margin_px`` has the highest standard deviation of ``image``: (row, col, std).
    ``image`` holds the targets pasted before this one: a place beside them counts as busy."""
    side_r, side_c = image.shape
    rows = rng.integers(0, side_r - size[0] + 1, _BUSY_CANDIDATES)
    cols = rng.integers(0, side_c - size[1] + 1, _BUSY_CANDIDATES)
    best = (int(rows[0]), int(cols[0]), -1.0)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        window = image[max(r - margin_px, 0) : r + size[0] + margin_px, max(c - margin_px, 0) : c + size[1] + margin_px]
        std = float(window.std())
        if std > best[2]:
            best = (r, c, std)
    return best


def _vanished_peaks(resized: npt.NDArray[np.float32], mask: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Pixels to add to a thresholded rescaled mask so that no target vanishes on shrinking:
    the peak pixel of every component of ``resized > 0`` that holds no mask pixel."""
    labels, _ = ndimage.label(resized > 1e-3, structure=np.ones((3, 3), bool))
    keep = np.zeros(mask.shape, bool)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or mask[box][labels[box] == label].any():
            continue
        part = np.where(labels[box] == label, resized[box], -1.0)
        r, c = np.unravel_index(int(np.argmax(part)), part.shape)
        keep[box[0].start + r, box[1].start + c] = True
    return keep


@dataclass(frozen=True)
class SyntheticSource:
    """Everything a synthetic crop is made of; :class:`mim_model.training.data.TrainCrops`
    calls :meth:`sample` for the share ``spec.p_synthetic`` of its crops."""

    backgrounds: list[npt.NDArray[np.float32]]
    chips: list[TargetChip]
    spec: SyntheticSpec

    @classmethod
    def build(cls, background_paths: list[str], train_split: SirstSplit, spec: SyntheticSpec) -> SyntheticSource:
        """Load the backgrounds and cut the train split's targets into chips."""
        if not background_paths and spec.p_clutter < 1:
            raise DatasetError("synthetic samples: expected at least one background raster (or p_clutter 1), got none")
        source = cls([load_background(p) for p in background_paths], extract_chips(train_split), spec)
        px = sum(b.size for b in source.backgrounds)
        log.info(
            "synthetic samples (p=%.2f): %d backgrounds (%.2f Mpx), clutter share %.2f, %d target chips, "
            "contrast %s, <= %d targets, pasted at %s resolution, %.2f of them on busy ground at "
            "signal-to-clutter %s",
            spec.p_synthetic, len(source.backgrounds), px / 1e6, spec.p_clutter, len(source.chips),
            spec.contrast_range, spec.max_targets, spec.paste_at, spec.busy_share, spec.busy_scr_range,
        )
        return source

    def sample(
        self, crop_px: int, rng: np.random.Generator, scale: float
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        return synthetic_sample(self.backgrounds, self.chips, crop_px, self.spec, rng, scale)


#: Land validation crops: every background procedural clutter, targets as hot as the scan
#: accuracy scene's (0.35-0.7 of the stretch above the local background), up to 4 a crop.
LAND_VAL_SPEC = SyntheticSpec(p_synthetic=1.0, p_clutter=1.0, contrast_range=(0.35, 0.7), max_targets=4)


def land_validation_crops(
    split: SirstSplit, count: int, crop_px: int = 256, seed: int = 12345
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]]:
    """``count`` fixed crops of a split's targets (use ``val``) on procedural land clutter,
    at native resolution (scale 1), as (image01, mask): a held-out measure of how a network
    does on land, which SIRST's own val images (mostly sky and sea) do not give."""
    chips = extract_chips(split)
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        image, mask = synthetic_sample([], chips, crop_px, LAND_VAL_SPEC, rng, 1.0)
        crops.append((image, mask > 0.5))
    return crops
