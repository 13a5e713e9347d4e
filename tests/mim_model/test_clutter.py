"""Procedural land clutter for synthetic crops: values, structure, reproducibility, use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mim_model.training.clutter import _settlements, _straight_roads, _voronoi_parcels, clutter_background
from mim_model.training.synthetic import (
    SyntheticSource,
    SyntheticSpec,
    synthetic_sample,
)
from mim_model.training.train import TrainError

from .sirst_crops import needs_sirst, tiny_train_config
from .test_synthetic import _square_chip


def test_clutter_is_a_structured_image_in_the_unit_range_and_a_function_of_the_seed() -> None:
    for seed in range(6):
        image = clutter_background(192, np.random.default_rng(seed))
        assert image.shape == (192, 192) and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.3
        # fields and water, not noise: neighbouring pixels agree closely
        assert np.corrcoef(image[:, 1:].ravel(), image[:, :-1].ravel())[0, 1] > 0.9
        # sharp field edges: a good share of the horizontal steps is large
        assert (np.abs(np.diff(image, axis=1)) > 0.05).mean() > 0.005
    np.testing.assert_array_equal(clutter_background(128, np.random.default_rng(4)),
                                  clutter_background(128, np.random.default_rng(4)))
    assert not np.array_equal(clutter_background(128, np.random.default_rng(4)),
                              clutter_background(128, np.random.default_rng(5)))
    with pytest.raises(ValueError, match="side_px: expected at least 64, got 32"):
        clutter_background(32, np.random.default_rng(0))


def test_straight_roads_are_one_pixel_lines() -> None:
    rng = np.random.default_rng(3)
    assert not _straight_roads(128, 0, rng).any()
    for _ in range(5):
        rows, cols = np.nonzero(_straight_roads(128, 1, rng))
        assert rows.size >= 8
        points = np.stack([rows, cols], 1).astype(float)
        spread = np.linalg.eigvalsh(np.cov((points - points.mean(0)).T))
        assert np.sqrt(spread[0]) < 0.6  # across the line: one pixel (rounding)


def test_settlement_structure_is_bounded_dense_and_only_in_the_settlements() -> None:
    seen = 0
    for seed in range(12):
        where, structure = _settlements(160, np.random.default_rng(seed))
        assert structure.dtype == np.float32 and not structure[~where].any()
        assert structure.min() >= -0.15 and structure.max() <= 0.25
        if where.sum() > 400:
            seen += 1
            assert (structure[where] != 0).mean() > 0.15  # dense: buildings in clusters, not lone spots
    assert seen >= 3


def test_voronoi_fields_are_field_sized_and_cover_the_image() -> None:
    for seed in range(4):
        labels, count = _voronoi_parcels(200, np.random.default_rng(seed))
        present = np.unique(labels)
        assert labels.shape == (200, 200) and present.min() >= 1 and present.max() <= count
        mean_area = labels.size / present.size
        assert 6**2 <= mean_area <= 60**2


def test_synthetic_crops_on_clutter_need_no_raster() -> None:
    spec = SyntheticSpec(p_synthetic=1.0, p_clutter=1.0, contrast_range=(0.5, 0.5), max_targets=2)
    assert not spec.needs_rasters
    images = []
    for seed in range(4):
        image, mask = synthetic_sample([], [_square_chip()], 128, spec, np.random.default_rng(seed), 2.0)
        assert image.shape == mask.shape == (128, 128) and mask.sum() >= 50  # a 5 px chip at 2x: ~100 px
        assert image[mask == 1].mean() > np.median(image) + 0.2  # the targets stand out of the clutter
        images.append(image)
    assert not np.array_equal(images[0], images[1])  # a fresh background per crop
    with pytest.raises(ValueError, match="p_clutter: expected a probability in \\[0, 1\\], got 1.5"):
        SyntheticSpec(p_synthetic=0.5, p_clutter=1.5)


@needs_sirst
def test_train_config_accepts_clutter_without_rasters(tiny_sirst: Path, tmp_path: Path) -> None:
    from mim_model.training.data import SirstSplit

    only_clutter = SyntheticSpec(p_synthetic=0.5, p_clutter=1.0)
    cfg = tiny_train_config(tiny_sirst, tmp_path / "c", synthetic=only_clutter)
    assert cfg.synthetic.p_clutter == 1.0
    source = SyntheticSource.build([], SirstSplit.load(tiny_sirst, "train"), only_clutter)
    image, mask = source.sample(64, np.random.default_rng(0), 2.0)
    assert image.shape == (64, 64) and mask.any()
    with pytest.raises(TrainError, match="synthetic_backgrounds: expected at least one raster"):
        tiny_train_config(tiny_sirst, tmp_path / "x", synthetic=SyntheticSpec(p_synthetic=0.5, p_clutter=0.5))


@needs_sirst
def test_land_validation_crops_are_fixed_and_logged_at_each_evaluation(tiny_sirst: Path, tmp_path: Path) -> None:
    import json

    from mim_model.training.data import SirstSplit
    from mim_model.training.synthetic import land_validation_crops
    from mim_model.training.train import train

    val = SirstSplit.load(tiny_sirst, "val")
    first, again = land_validation_crops(val, 3, 128), land_validation_crops(val, 3, 128)
    assert len(first) == 3
    for (image, mask), (image2, mask2) in zip(first, again, strict=True):
        assert image.shape == mask.shape == (128, 128) and mask.dtype == np.bool_ and mask.any()
        np.testing.assert_array_equal(image, image2)  # the same crops in every evaluation and run
        assert image[mask].mean() > np.median(image) + 0.2  # hot targets (0.35-0.7 above their ground)
    cfg = tiny_train_config(tiny_sirst, tmp_path / "run", land_val_crops=2)
    assert train(cfg)["finished"]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "land_val" not in records[0]  # no evaluation at epoch 1
    land = records[1]["land_val"]
    assert set(land) == {"iou", "niou", "pd", "fa", "n_targets", "n_matched"} and land["n_targets"] >= 2
    assert 0.0 <= land["pd"] <= 1.0 and 0.0 <= land["fa"] <= 1.0
    with pytest.raises(TrainError, match="land_val_crops: expected an integer >= 0, got -1"):
        tiny_train_config(tiny_sirst, tmp_path / "x", land_val_crops=-1)
