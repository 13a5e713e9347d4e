"""Procedural land clutter: backgrounds for synthetic crops that look like SWIR farmland.

The only real land scene on hand (the Sentinel-2 B12 crop) is the scan accuracy test's
background and must not be trained on; the Landsat thermal crops are smooth cloud and
terrain at 100 m. A scanned SWIR scene at 10-30 m is mostly what this module draws, with
the shapes that make a small-target detector fire or go blind:

- a patchwork of fields at a random angle, either nested rectangles or irregular
  (stretched Voronoi) parcels, 6 to 40 px across as at 10-30 m, each of its own brightness
  (some bright enough to reach the top of the stretch) with furrows, noise or a rough
  crop texture of its own inside, separated by sharp edges;
- roads: along some field edges and straight ones across the scene (1-2 px, brighter or
  darker than the fields);
- settlements: blobs of dense small-scale structure (buildings, yards) of up to 0.25 of
  the range, the busiest texture of a real scene (Sentinel-2 SWIR at 20 m has ten times
  the small-scale variation of uniform fields);
- water (very dark, smooth) in large blobs and winding channels;
- woods: darker, rough patches;
- terrain shading (1/f noise) and a sensor blur of about one pixel.

Nothing in it is a target on purpose: no isolated smooth bright spot stands far above its
ground (settlement structure stays below 0.25 of the range and comes in clusters); every
pasted target is a positive and the clutter is the negative. The result is stretched onto [0, 1] by the
0.5 and 99.99 percentiles, as ``irscan scan`` normalises a scene.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import cKDTree

from mim_model.training.preprocess import STRETCH_PCT

__all__ = ["clutter_background"]


def _smooth_noise(side_px: int, sigma_px: float, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Gaussian-filtered white noise, scaled to zero mean and unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal((side_px, side_px)).astype(np.float32), sigma_px, mode="wrap")
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _fractal_noise(side_px: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Sum of octaves of smooth noise with amplitude proportional to scale (1/f-like)."""
    total = np.zeros((side_px, side_px), np.float32)
    sigma = side_px / 8
    while sigma >= 1.0:
        total += (sigma / side_px) * _smooth_noise(side_px, sigma, rng)
        sigma /= 2
    return total / max(float(total.std()), 1e-6)


def _parcels(side_px: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.int32], int]:
    """Label image of nested rectangles: split boxes at random until they are field-sized."""
    labels = np.zeros((side_px, side_px), np.int32)
    boxes = [(0, 0, side_px, side_px)]
    count = 0
    min_px = round(float(np.exp(rng.uniform(np.log(6.0), np.log(40.0)))))
    while boxes:
        r0, c0, r1, c1 = boxes.pop()
        h, w = r1 - r0, c1 - c0
        splittable = max(h, w) > 2 * min_px and (max(h, w) > 4 * min_px or rng.random() < 0.6)
        if splittable:
            if (h >= w) if rng.random() < 0.8 else (h < w):
                cut = int(rng.integers(r0 + min_px, r1 - min_px + 1)) if h > 2 * min_px else (r0 + r1) // 2
                boxes += [(r0, c0, cut, c1), (cut, c0, r1, c1)]
            else:
                cut = int(rng.integers(c0 + min_px, c1 - min_px + 1)) if w > 2 * min_px else (c0 + c1) // 2
                boxes += [(r0, c0, r1, cut), (r0, cut, r1, c1)]
        else:
            count += 1
            labels[r0:r1, c0:c1] = count
    return labels, count


def _voronoi_parcels(side_px: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.int32], int]:
    """Label image of irregular fields: nearest of random seeds, stretched along one axis."""
    cell_px = float(np.exp(rng.uniform(np.log(8.0), np.log(45.0))))
    stretch = rng.uniform(1.0, 3.0)
    count = max(4, int((side_px / cell_px) ** 2))
    seeds = rng.uniform(0, side_px, (count, 2))
    rr, cc = np.mgrid[0:side_px, 0:side_px].astype(np.float32)
    points = np.stack([rr.ravel(), cc.ravel() / stretch], axis=1)
    _, nearest = cKDTree(seeds * np.array([1.0, 1.0 / stretch])).query(points)
    return (nearest.reshape(side_px, side_px) + 1).astype(np.int32), count


def _farmland(side_px: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Fields of random brightness at a random angle, with roads along some field edges."""
    big = int(side_px * 1.45) + 2  # room to rotate and crop back
    labels, count = _parcels(big, rng) if rng.random() < 0.4 else _voronoi_parcels(big, rng)
    brightness = rng.beta(1.0, 2.2, count + 1).astype(np.float32) * 0.9 + 0.03
    image = brightness[labels]
    # texture inside the fields: furrows in some, a rough crop texture in others, fine noise in all
    furrow_period = rng.uniform(3.0, 8.0)
    rows = np.arange(big, dtype=np.float32)[:, None]
    furrows = np.sin(2 * np.pi * rows / furrow_period).astype(np.float32) * np.ones((1, big), np.float32)
    kind = rng.random(count + 1)
    image += np.where((kind < 0.3)[labels], 0.04 * furrows, 0.0)
    rough_amplitude = np.where(kind > 0.6, rng.uniform(0.02, 0.08, count + 1), 0.0).astype(np.float32)
    image += rough_amplitude[labels] * _smooth_noise(big, rng.uniform(0.7, 2.0), rng)
    image += 0.03 * rng.standard_normal((big, big)).astype(np.float32) * rng.uniform(0.3, 1.0)
    # roads: thin lines along some parcel boundaries
    edges = (labels != np.roll(labels, 1, axis=0)) | (labels != np.roll(labels, 1, axis=1))
    keep_road = rng.random(count + 1) < rng.uniform(0.05, 0.3)
    roads = edges & keep_road[labels]
    if rng.random() < 0.5:
        roads = ndimage.binary_dilation(roads)
    roads |= _straight_roads(big, int(rng.integers(0, 7)), rng)
    road_value = rng.uniform(0.35, 0.75) if rng.random() < 0.6 else rng.uniform(0.0, 0.1)
    image = np.where(roads, road_value, image)
    angle = rng.uniform(0.0, 90.0)
    rotated = ndimage.rotate(image, angle, reshape=False, order=1, mode="reflect")
    start = (big - side_px) // 2
    return rotated[start : start + side_px, start : start + side_px]


def _straight_roads(side_px: int, count: int, rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """``count`` straight 1 px lines across the image at random angles."""
    roads = np.zeros((side_px, side_px), bool)
    t = np.arange(-side_px, side_px, 0.5)
    for _ in range(count):
        r0, c0 = rng.uniform(0, side_px, 2)
        angle = rng.uniform(0, np.pi)
        r, c = (r0 + t * np.sin(angle)).astype(int), (c0 + t * np.cos(angle)).astype(int)
        inside = (r >= 0) & (r < side_px) & (c >= 0) & (c < side_px)
        roads[r[inside], c[inside]] = True
    return roads


def _settlements(side_px: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
    """Where the settlements are (0 to 3 blobs) and their structure: small bright and dark
    rectangles (buildings, yards) of up to 0.25 of the range, dense, never alone."""
    where = np.zeros((side_px, side_px), bool)
    for _ in range(int(rng.integers(0, 4))):
        radius = rng.uniform(8, side_px / 6)
        r0, c0 = rng.uniform(0, side_px, 2)
        rr, cc = np.ogrid[0:side_px, 0:side_px]
        wobble = 1.0 + 0.4 * _smooth_noise(side_px, radius / 2, rng)
        where |= np.hypot(rr - r0, cc - c0) < radius * wobble
    structure = np.zeros((side_px, side_px), np.float32)
    if where.any():
        dots = rng.random((side_px, side_px)) < rng.uniform(0.05, 0.2)
        values = rng.uniform(-0.15, 0.25, (side_px, side_px)).astype(np.float32)
        block = ndimage.grey_dilation(np.where(dots, values, 0.0), size=(2, 2))
        structure = np.where(where, block, 0.0).astype(np.float32)
    return where, structure


def _channels(side_px: int, rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """Winding water channels: random walks of smooth heading, 2-8 px wide."""
    water = np.zeros((side_px, side_px), bool)
    for _ in range(int(rng.integers(0, 4))):
        steps = side_px * 2
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.08, steps))
        r = rng.uniform(0, side_px) + np.cumsum(np.sin(heading))
        c = rng.uniform(0, side_px) + np.cumsum(np.cos(heading))
        inside = (r >= 0) & (r < side_px) & (c >= 0) & (c < side_px)
        line = np.zeros_like(water)
        line[r[inside].astype(int), c[inside].astype(int)] = True
        water |= ndimage.binary_dilation(line, iterations=int(rng.integers(1, 5)))
    return water


def clutter_background(side_px: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """One (side_px, side_px) float32 land-clutter background in [0, 1] (module docstring)."""
    if side_px < 64:
        raise ValueError(f"side_px: expected at least 64, got {side_px}")
    image = _farmland(side_px, rng)
    # woods: darker and rougher where a smooth field is high
    woods = _smooth_noise(side_px, side_px / 16, rng) > rng.uniform(0.6, 1.6)
    rough = 0.03 * _smooth_noise(side_px, 1.5, rng)
    image = np.where(woods, rng.uniform(0.05, 0.2) + rough, image)
    # settlements: dense small-scale structure over a brighter ground
    town, structure = _settlements(side_px, rng)
    image = np.where(town, 0.5 * image + rng.uniform(0.15, 0.35), image) + structure
    # terrain shading
    image = image * (1.0 + rng.uniform(0.05, 0.25) * _fractal_noise(side_px, rng))
    # water: large smooth blobs (a random share of the scene, often none) and channels
    water = _channels(side_px, rng)
    if rng.random() < 0.6:
        water |= _smooth_noise(side_px, side_px / 10, rng) > rng.uniform(0.3, 2.0)
    water_value = rng.uniform(0.0, 0.04)
    image = np.where(water, water_value + 0.005 * rng.standard_normal((side_px, side_px)), image)
    image = ndimage.gaussian_filter(image.astype(np.float32), rng.uniform(0.4, 1.0))
    image += rng.uniform(0.002, 0.01) * rng.standard_normal((side_px, side_px)).astype(np.float32)
    low, high = np.percentile(image, STRETCH_PCT)
    stretched = np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    # in a real scene something brighter than the land (beach, cloud, a fire) often sets
    # the top of the stretch: the land then spans only part of [0, 1]
    return (stretched * rng.uniform(0.4, 1.0)).astype(np.float32)
