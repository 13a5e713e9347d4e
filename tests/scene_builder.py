"""Large test scenes with known truth: a real Sentinel-2 SWIR background, real SIRST targets.

No large real infrared scene is available offline, so scenes are built from what is:
the real Sentinel-2 B12 crop (967 x 973, EPSG:32618, 20 m) is mirrored out to any size
under its own geotransform, and real SIRST target chips (the pixels of one mask component,
as contrast over their local background) are pasted at chosen pixels. The truth is each
pasted target's pixel centroid and map position.

Used by the end-to-end tests, the benchmarks and ``scripts/make_sample_scene.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio
from affine import Affine

from mim_model.training.data import SirstSplit
from mim_model.training.synthetic import TargetChip, extract_chips

__all__ = [
    "shared_data_dir",
    "S2_B12_RELATIVE",
    "TargetChip",
    "PastedTarget",
    "load_target_chips",
    "mirrored_background",
    "build_scene",
]

REPO = Path(__file__).resolve().parents[1]
S2_B12_RELATIVE = "geo-ir-samples/sentinel2_T18SVG_20160112_crop/s2_B12.tif"


def shared_data_dir() -> Path | None:
    """``$IRSCAN_SHARED_DATA``, ``../shared/data`` beside the repo, or ``.gpu/data``."""
    for candidate in (os.environ.get("IRSCAN_SHARED_DATA"), REPO.parent / "shared" / "data", REPO / ".gpu" / "data"):
        if candidate and (Path(candidate) / S2_B12_RELATIVE).is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class PastedTarget:
    """Truth for one pasted target: centroid in pixel index space (pixel (r, c) at (r, c))
    and at the pixel centre in map coordinates."""

    row: float
    col: float
    x: float
    y: float
    area_px: int
    source: str


def load_target_chips(sirst_dir: Path, split: str = "test", min_area_px: int = 2) -> list[TargetChip]:
    """Every mask component of the SIRST images of a split (idx_427) as a chip (the same
    cut as the training's synthetic crops, :func:`mim_model.training.synthetic.extract_chips`)."""
    return extract_chips(SirstSplit.load(sirst_dir, split, "idx_427"), min_area_px)


def _mirror_index(index: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.int64]:
    period = index % (2 * size)
    return np.where(period < size, period, 2 * size - 1 - period)


def mirrored_background(source: Path, height_px: int, width_px: int) -> tuple[npt.NDArray, Affine, str]:
    """The source raster mirrored out to (height, width) under its own transform."""
    with rasterio.open(source) as dataset:
        base = dataset.read(1)
        transform, crs_wkt = dataset.transform, dataset.crs.to_wkt()
    rows = _mirror_index(np.arange(height_px), base.shape[0])
    cols = _mirror_index(np.arange(width_px), base.shape[1])
    return base[np.ix_(rows, cols)], transform, crs_wkt


def _positions(
    height_px: int, width_px: int, count: int, core_px: int, straddle: int, rng: np.random.Generator,
    min_gap_px: int = 24, border_px: int = 16,
) -> list[tuple[int, int]]:
    """Target centres in rows [0, height_px) and columns [0, width_px): ``straddle`` of them
    on chunk borders (core_px multiples), the rest random."""
    chosen: list[tuple[int, int]] = []

    def free(r: int, c: int) -> bool:
        return all(abs(r - a) >= min_gap_px or abs(c - b) >= min_gap_px for a, b in chosen)

    borders_r = [k * core_px for k in range(1, -(-height_px // core_px)) if border_px < k * core_px < height_px - border_px]
    borders_c = [k * core_px for k in range(1, -(-width_px // core_px)) if border_px < k * core_px < width_px - border_px]
    tries = 0
    while len(chosen) < count and tries < 100 * count:
        tries += 1
        r = int(rng.integers(border_px, height_px - border_px))
        c = int(rng.integers(border_px, width_px - border_px))
        if len(chosen) < straddle and borders_r and borders_c:
            kind = len(chosen) % 3
            if kind in (0, 2):
                r = int(rng.choice(borders_r))
            if kind in (1, 2):
                c = int(rng.choice(borders_c))
        if free(r, c):
            chosen.append((r, c))
    return chosen


def build_scene(
    path: Path,
    height_px: int,
    width_px: int,
    chips: list[TargetChip],
    *,
    count: int,
    core_px: int = 384,
    straddle: int = 0,
    seed: int = 0,
    background: Path | None = None,
    nodata_band: tuple[int, int] | None = None,
    peak_contrast: tuple[float, float] = (0.35, 0.7),
) -> list[PastedTarget]:
    """Write a uint16 GeoTIFF (tiled, deflate) with ``count`` pasted targets; return the truth.

    Each chip keeps its real shape and intensity profile; its peak is set to a contrast drawn
    uniformly from ``peak_contrast`` times the scene's dynamic range (0.5..99.99 percentiles,
    as irscan normalises) above the local background. Hot targets (fires, engines, ships in
    sun glint) stand that far above a SWIR/thermal background; SIRST's own contrasts are
    relative to 8-bit, mostly sky, images and would vanish in bright, textured land.
    ``nodata_band`` (row_start, height) marks the rows from row_start on as nodata (value 0,
    declared as nodata); targets are then placed above it.
    """
    data_dir = shared_data_dir()
    if background is None:
        if data_dir is None:
            raise FileNotFoundError("shared data not found: set IRSCAN_SHARED_DATA")
        background = data_dir / S2_B12_RELATIVE
    rng = np.random.default_rng(seed)
    scene, transform, crs_wkt = mirrored_background(background, height_px, width_px)
    scene = scene.astype(np.float64)
    low, high = np.percentile(scene[:: max(1, height_px // 1024), :: max(1, width_px // 1024)], [0.5, 99.99])
    scale = high - low
    truth = []
    rows_for_targets = nodata_band[0] if nodata_band is not None else height_px
    for r, c in _positions(rows_for_targets, width_px, count, core_px, straddle, rng):
        chip = chips[int(rng.integers(len(chips)))]
        h, w = chip.mask.shape
        r0, c0 = r - h // 2, c - w // 2
        if r0 < 0 or c0 < 0 or r0 + h > height_px or c0 + w > width_px:
            continue
        region = scene[r0 : r0 + h, c0 : c0 + w]
        local = float(np.median(region[~chip.mask])) if (~chip.mask).any() else float(np.median(region))
        peak = float(rng.uniform(*peak_contrast)) * scale
        profile = chip.contrast[chip.mask] / float(chip.contrast.max())
        region[chip.mask] = np.maximum(region[chip.mask], local + profile * peak)
        rr, cc = np.nonzero(chip.mask)
        row, col = float(rr.mean() + r0), float(cc.mean() + c0)
        x, y = transform * (col + 0.5, row + 0.5)
        truth.append(PastedTarget(row, col, float(x), float(y), int(rr.size), chip.source))
    out = np.clip(np.rint(scene), 1, 65535).astype(np.uint16)
    nodata = None
    if nodata_band is not None:
        out[nodata_band[0] :] = 0
        nodata = 0
        truth = [t for t in truth if t.row < nodata_band[0] - 8]
    profile = {
        "driver": "GTiff", "dtype": "uint16", "count": 1, "height": height_px, "width": width_px,
        "crs": crs_wkt, "transform": transform, "tiled": True, "blockxsize": 512, "blockysize": 512,
        "compress": "deflate", "nodata": nodata,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(out, 1)
    return truth
