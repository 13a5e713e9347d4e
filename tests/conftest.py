"""Shared test fixtures: tiny synthetic GeoTIFFs written with rasterio, paths to shared data."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

# The project's shared data lives beside the repository: <repo>/../shared/data
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
S2_B12 = SHARED_DATA / "geo-ir-samples" / "sentinel2_T18SVG_20160112_crop" / "s2_B12.tif"

# Sentinel-2 tile T18SVG's grid (EPSG:32618, 20 m): a real, north-up UTM geotransform.
UTM_CRS = "EPSG:32618"
UTM_TRANSFORM = Affine(20.0, 0.0, 435720.0, 0.0, -20.0, 4179460.0)


@pytest.fixture
def s2_b12() -> Path:
    """The real Sentinel-2 B12 crop (973 x 967 uint16, EPSG:32618); skips where absent."""
    if not S2_B12.exists():
        pytest.skip(f"shared data not found: {S2_B12} (needs the project's ../shared/data)")
    return S2_B12


MakeScene = Callable[..., Path]


@pytest.fixture
def make_scene(tmp_path: Path) -> MakeScene:
    """Factory writing a small single- or multi-band GeoTIFF into ``tmp_path``.

    ``make_scene(shape=(300, 257), dtype="uint16", crs=UTM_CRS, transform=UTM_TRANSFORM,
    nodata=None, data=None, targets=[(row, col), ...], name="scene.tif", count=1)``:
    the background is seeded noise around 1000; each target is a 3x3 square of value 4000
    centred on ``(row, col)``; ``data`` (an (H, W) array) replaces all of that.
    """

    def make(
        shape: tuple[int, int] = (300, 257),
        *,
        dtype: str = "uint16",
        crs: str | None = UTM_CRS,
        transform: Affine | None = UTM_TRANSFORM,
        nodata: float | None = None,
        data: np.ndarray | None = None,
        targets: Sequence[tuple[int, int]] = (),
        name: str = "scene.tif",
        count: int = 1,
        **profile: Any,
    ) -> Path:
        h, w = shape
        if data is None:
            rng = np.random.default_rng(0)
            data = 1000.0 + rng.normal(0.0, 20.0, size=shape)
            for r, c in targets:
                data[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 4000.0
        arr = np.asarray(data).astype(dtype)
        path = tmp_path / name
        kwargs: dict[str, Any] = {
            "driver": "GTiff",
            "height": h,
            "width": w,
            "count": count,
            "dtype": dtype,
        }
        if crs is not None:
            kwargs["crs"] = crs
        if transform is not None:
            kwargs["transform"] = transform
        if nodata is not None:
            kwargs["nodata"] = nodata
        kwargs.update(profile)
        with warnings.catch_warnings():
            # a scene without georeference is a case under test, not a mistake here
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, "w", **kwargs) as ds:
                for b in range(1, count + 1):
                    ds.write(arr, b)
        return path

    return make
