"""pipeline.normalize: per-scene stats from a decimated read, modes, apply()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.normalize import (
    NormalizationSpec,
    NormalizationStats,
    apply,
    compute_stats,
    stats_from_sample,
)
from pipeline.scene import open_scene, read_window
from pipeline.tiling import TilingSpec, Window, plan_tiles


def test_percentiles_ignore_nodata(make_scene) -> None:
    data = np.tile(np.arange(1, 101, dtype="uint16"), (50, 1))  # values 1..100 per row
    data[:, :10] = 0  # nodata
    scene = open_scene(make_scene((50, 100), data=data, nodata=0))
    stats = compute_stats(scene, NormalizationSpec(low_pct=0.0, high_pct=100.0))
    assert (stats.low, stats.high) == (11.0, 100.0)
    assert stats.n_samples == 50 * 90
    assert stats.fill == pytest.approx((55.5 - 11.0) / 89.0)


def test_sample_is_decimated_not_whole(make_scene) -> None:
    scene = open_scene(make_scene((300, 257)))
    stats = compute_stats(scene, NormalizationSpec(sample_max_px=64))
    assert 0 < stats.n_samples <= 64 * 64


def test_fixed_and_none_modes() -> None:
    fixed = stats_from_sample(
        np.array([5.0, 10.0]), None, NormalizationSpec("fixed", min_value=0, max_value=100)
    )
    assert (fixed.low, fixed.high, fixed.mode) == (0.0, 100.0, "fixed")
    none = stats_from_sample(np.array([]), None, NormalizationSpec("none"))
    assert (none.low, none.high) == (0.0, 1.0)
    np.testing.assert_array_equal(
        apply(np.array([-0.5, 0.25, 2.0]), none), np.float32([0.0, 0.25, 1.0])
    )


def test_apply_clips_and_fills_nodata() -> None:
    stats = NormalizationStats(low=100.0, high=300.0, fill=0.4)
    out = apply(np.array([[50.0, 100.0, 200.0], [300.0, 1e6, np.nan]]), stats)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5], [1.0, 1.0, 0.4]])


def test_constant_and_empty_scene() -> None:
    spec = NormalizationSpec()
    const = stats_from_sample(np.full(10, 7.0), None, spec)
    assert (apply(np.array([7.0, 8.0]), const) == 0).all()
    empty = stats_from_sample(np.full(4, np.nan), None, spec)
    assert empty.n_samples == 0 and (empty.low, empty.high) == (0.0, 1.0)


def test_tiles_normalise_identically_to_whole_scene(s2_b12: Path) -> None:
    """One scene-level map: the cores of normalised tiles equal the normalised scene."""
    scene = open_scene(s2_b12)
    stats = compute_stats(scene, NormalizationSpec())
    assert 0 < stats.low < stats.high <= 65535 and stats.n_samples == 973 * 967
    whole = apply(read_window(scene, Window(0, 0, 973, 967)).pixels, stats)
    assert whole.min() >= 0.0 and whole.max() <= 1.0
    for tile in plan_tiles(973, 967, TilingSpec(512, 64))[:4]:
        tile_norm = apply(read_window(scene, tile.read).pixels, stats)
        np.testing.assert_array_equal(tile_norm[tile.core_in_tile()], whole[tile.core.to_slices()])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "auto"}, "mode must be one of"),
        ({"low_pct": 50, "high_pct": 10}, "low_pct < high_pct"),
        ({"high_pct": 101}, "high_pct=101"),
        ({"mode": "fixed", "min_value": 1.0}, "needs min_value and max_value"),
        ({"mode": "fixed", "min_value": 5.0, "max_value": 1.0}, "min_value < max_value"),
        ({"sample_max_px": 2}, "sample_max_px must be >= 16"),
    ],
)
def test_spec_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        NormalizationSpec(**kwargs)
