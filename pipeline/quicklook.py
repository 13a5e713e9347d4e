"""``quicklook.png``: the scene reduced, stretched, with detections marked. Reads O(image).

The scene is read decimated (long side at most ``max_side_px``, default 1024; GDAL uses
overviews where present) with nearest-neighbour sampling, stretched linearly between the
``low_pct``/``high_pct`` percentiles (2 %/98 %) of its valid pixels to grey 0..255, nodata
drawn dark blue, and each detection drawn as a red circle (radius >= 6 px, larger for objects
whose bounding box is larger on the quicklook) with a centre dot. The marker sits at the
object's centroid: index-space ``(row, col)`` maps to quicklook pixel coordinates
``((col + 0.5) * sx, (row + 0.5) * sy)`` in PIL's edge-based coordinates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from pipeline.errors import InputError
from pipeline.scene import SceneInfo, read_decimated
from pipeline.vectorize import Detection
from pipeline.write_vectors import atomic_write

__all__ = ["QUICKLOOK_PNG", "render_quicklook", "write_quicklook", "stretch_to_uint8"]

log = logging.getLogger(__name__)

QUICKLOOK_PNG = "quicklook.png"
_NODATA_RGB = (20, 20, 60)
_MARK_RGB = (255, 0, 0)


def stretch_to_uint8(
    pixels: npt.NDArray[np.floating],
    valid: npt.NDArray[np.bool_],
    low_pct: float = 2.0,
    high_pct: float = 98.0,
) -> npt.NDArray[np.uint8]:
    """Percentile stretch of the valid pixels to 0..255 (invalid pixels become 0). Pure."""
    out = np.zeros(pixels.shape, dtype=np.uint8)
    sample = pixels[valid]
    if sample.size == 0:
        return out
    low, high = (float(v) for v in np.percentile(sample, [low_pct, high_pct]))
    if not high > low:
        high = low + 1.0
    scaled = (pixels.astype(np.float64) - low) * (255.0 / (high - low))
    out[valid] = np.clip(np.rint(np.nan_to_num(scaled[valid])), 0, 255).astype(np.uint8)
    return out


def render_quicklook(
    pixels: npt.NDArray[np.floating],
    valid: npt.NDArray[np.bool_],
    scene_shape: tuple[int, int],
    detections: Sequence[Detection],
    *,
    low_pct: float = 2.0,
    high_pct: float = 98.0,
) -> Image.Image:
    """Draw the quicklook from an already decimated scene. Pure (no I/O).

    Parameters
    ----------
    pixels, valid : ndarray, shape (h, w)
        The decimated scene and its valid mask.
    scene_shape : tuple of int
        Full-resolution ``(H, W)``, to scale detection coordinates.
    detections : sequence of Detection
    low_pct, high_pct : float
        Stretch percentiles.

    Returns
    -------
    PIL.Image.Image
        RGB image of shape ``(h, w)``.
    """
    grey = stretch_to_uint8(pixels, valid, low_pct, high_pct)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb[~valid] = _NODATA_RGB
    image = Image.fromarray(rgb)
    h, w = grey.shape
    sy, sx = h / scene_shape[0], w / scene_shape[1]
    draw = ImageDraw.Draw(image)
    for d in detections:
        cx, cy = (d.col + 0.5) * sx, (d.row + 0.5) * sy
        extent = max((d.row_max - d.row_min + 1) * sy, (d.col_max - d.col_min + 1) * sx)
        radius = max(6.0, 0.75 * extent)
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), outline=_MARK_RGB, width=2
        )
        draw.ellipse((cx - 1, cy - 1, cx + 1, cy + 1), fill=_MARK_RGB)
    return image


def write_quicklook(
    scene: SceneInfo,
    detections: Sequence[Detection],
    path: str | os.PathLike[str],
    *,
    max_side_px: int = 1024,
    low_pct: float = 2.0,
    high_pct: float = 98.0,
) -> Path:
    """Read the scene decimated, draw detections and write a PNG atomically.

    Parameters
    ----------
    scene : SceneInfo
    detections : sequence of Detection
    path : path-like
        Output PNG (e.g. ``OUT_DIR/<scene>/quicklook.png``).
    max_side_px : int
        Long side of the quicklook, >= 1.
    low_pct, high_pct : float
        Stretch percentiles, ``0 <= low_pct < high_pct <= 100``.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        Bad percentiles.
    SceneError
        The decimated read fails.
    """
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise InputError(
            f"quicklook: need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}"
        )
    sample = read_decimated(scene, max_side_px)
    image = render_quicklook(
        sample.pixels,
        sample.valid,
        scene.grid.shape,
        detections,
        low_pct=low_pct,
        high_pct=high_pct,
    )
    out = atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
    log.info(
        "%s: wrote %s (%dx%d, %d detections)",
        scene.name,
        out,
        image.width,
        image.height,
        len(detections),
    )
    return out
