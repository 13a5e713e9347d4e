"""Hard negatives: the objects Fa counts, their file, the pool crops are drawn from, and crops
that hold them (cases built with known answers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mim_model.training.data import Augment, SirstSplit, TrainCrops, augment_sample
from mim_model.training.hard_negatives import (
    FORMAT,
    HardNegative,
    HardNegativePool,
    HardNegativesError,
    hard_negatives_of_image,
    read_hard_negatives,
    write_hard_negatives,
)
from mim_model.training.metrics import match_components

PLAIN = Augment(scale_range=(1.0, 1.0), p_target_crop=0.0, flips=False, brightness=0, contrast=0, p_blur=0)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A 20 x 30 probability map and mask: a found target, two false objects, one weak one."""
    mask = np.zeros((20, 30), bool)
    mask[5:7, 5:7] = True
    prob = np.full((20, 30), 0.01)
    prob[5:7, 5:8] = 0.9  # the target, drawn one column wider: still matched (centroid 0.5 px off)
    prob[12, 20:23] = (0.6, 0.95, 0.7)  # false, 3 px, centroid (12, 21)
    prob[2, 25] = 0.55  # false, 1 px
    prob[17, 10] = 0.4  # false only below 0.4
    prob[8, 4:8] = 0.8  # false (the target is matched already) but 2 px from it: an outline error
    return prob, mask


def test_hard_negatives_are_the_objects_fa_counts_clear_of_targets() -> None:
    prob, mask = _scene()
    every = hard_negatives_of_image(prob, mask, 0.5, clear_px=0)
    assert every == [HardNegative(2.0, 25.0, 1, 0.55), HardNegative(8.0, 5.5, 4, 0.8), HardNegative(12.0, 21.0, 3, 0.95)]
    assert sum(h.area_px for h in every) == match_components(prob > 0.5, mask)[2] == 8
    assert hard_negatives_of_image(prob, mask, 0.5) == [every[0], every[2]]  # clear by more than 2 px
    assert hard_negatives_of_image(prob, mask, 0.5, clear_px=1) == every
    low = hard_negatives_of_image(prob, mask, 0.3)
    assert [(h.row_px, h.col_px, h.area_px) for h in low] == [(2, 25, 1), (12, 21, 3), (17, 10, 1)]
    assert hard_negatives_of_image(np.where(mask, 0.9, 0.0), mask, 0.5) == []
    with pytest.raises(HardNegativesError, match="clear_px: expected an integer >= 0, got -1"):
        hard_negatives_of_image(prob, mask, 0.5, clear_px=-1)


def test_files_round_trip_and_pool_by_image(tmp_path: Path) -> None:
    one = write_hard_negatives(tmp_path / "a" / "one.json",
                               {"format": FORMAT, "points": {"Misc_1": [[2.0, 25.0, 1, 0.55]], "Misc_2": [[3, 4, 9, 0.9]]}})
    two = write_hard_negatives(tmp_path / "two.json", {"format": FORMAT, "points": {"Misc_1": [[12.5, 21, 3, 0.95]]}})
    assert read_hard_negatives([one, two]) == {"Misc_1": [(2.0, 25.0), (12.5, 21.0)], "Misc_2": [(3.0, 4.0)]}


@pytest.mark.parametrize(("text", "needle"), [
    (None, "expected a file, got none there"),
    ("{not json", "expected a JSON file"),
    ("[]", "top level: expected a JSON object, got 'list'"),
    (json.dumps({"format": "other/1", "points": {}}), "format: expected 'irscan-hard-negatives/1', got 'other/1'"),
    (json.dumps({"format": FORMAT}), "points: expected an object"),
    (json.dumps({"format": FORMAT, "points": {"a": [[1, -2]]}}), "points['a']: expected [row, col, ...] with row, col >= 0, got [1, -2]"),
    (json.dumps({"format": FORMAT, "points": {"a": [["1", 2]]}}), "got ['1', 2]"),
    (json.dumps({"format": FORMAT, "points": {"a": [[True, 2]]}}), "got [True, 2]"),
    (json.dumps({"format": FORMAT, "points": {"a": 3}}), "points['a']: expected a list"),
])
def test_bad_files_are_named_with_the_field(tmp_path: Path, text: str | None, needle: str) -> None:
    path = tmp_path / "hn.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(HardNegativesError) as info:
        read_hard_negatives([path])
    assert str(path) in str(info.value) and needle in str(info.value)
    assert "\n" not in str(info.value)


def test_pool_draws_images_evenly_and_checks_its_points() -> None:
    points = {"a": [(1.0, 1.0)] * 9, "b": [(5.0, 7.0)], "elsewhere": [(0.0, 0.0)]}
    pool = HardNegativePool(points, ["c", "b", "a"], [(10, 10)] * 3)
    assert (pool.n_images, pool.n_points) == (2, 10)
    rng = np.random.default_rng(0)
    draws = [pool.draw(rng) for _ in range(2000)]
    share_b = sum(index == 1 for index, _ in draws) / len(draws)
    assert 0.45 < share_b < 0.55  # image b's one point as often as image a's nine
    assert {point for index, point in draws if index == 1} == {(5.0, 7.0)}
    with pytest.raises(HardNegativesError, match=r"got none of its 3 images among the 1 images"):
        HardNegativePool({"elsewhere": [(0.0, 0.0)]}, ["a", "b", "c"], [(10, 10)] * 3)
    with pytest.raises(HardNegativesError, match=r"image b: expected points inside its 10 x 6 px, got \(row, col\) \(5, 7\)"):
        HardNegativePool(points, ["b"], [(10, 6)])


def test_a_crop_holds_its_focus_point_at_any_rescale() -> None:
    img = np.zeros((60, 300), np.uint8)
    mask = np.zeros((60, 300), bool)
    mask[37:39, 211:213] = True  # marks the focus: p_target_crop 0, so only the focus places the crop there
    aug = Augment(scale_range=(0.5, 2.0), p_target_crop=0.0, flips=True, brightness=0, contrast=0, p_blur=0)
    rng = np.random.default_rng(1)
    held = [augment_sample(img, mask, 64, aug, rng, 1.0, focus_rc=(37.5, 211.5))[1].any() for _ in range(100)]
    assert all(held)
    uniform = [augment_sample(img, mask, 64, aug, rng, 1.0)[1].any() for _ in range(100)]
    assert sum(uniform) < 60  # without a focus most crops of the wide image miss that place


def test_train_crops_centre_their_share_on_hard_negatives() -> None:
    images, masks = [], []
    for _ in range(2):
        image = np.zeros((200, 200), np.uint8)
        image[150:154, 30:34] = 255  # a bright object where there is no target
        images.append(image)
        masks.append(np.zeros((200, 200), bool))
    split = SirstSplit(("a", "b"), tuple(images), tuple(masks))
    pool = HardNegativePool({"b": [(151.5, 31.5)]}, split.ids, [im.shape for im in images])

    def share_holding_the_object(p: float) -> float:
        crops = TrainCrops(split, 32, PLAIN, hard_negatives=pool, p_hard_negative=p)
        return float(np.mean([crops[(0, seed)][0].max().item() > 0.5 for seed in range(400)]))

    assert share_holding_the_object(1.0) == 1.0
    assert 0.4 < share_holding_the_object(0.5) < 0.65  # uniform crops hold it 4 % of the time
    assert share_holding_the_object(0.0) < 0.1
    with pytest.raises(ValueError, match="p_hard_negative"):
        TrainCrops(split, 32, PLAIN, p_hard_negative=0.5)
