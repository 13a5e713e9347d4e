"""Flip agreement: components kept or dropped by what the flipped passes see (built truth),
and a detector that fires at a fixed place in its input frame loses that blob and keeps the
real one."""

from __future__ import annotations

import numpy as np
import pytest

from mim_model.errors import InputShapeError
from mim_model.training.data import load_grey01, load_mask
from mim_model.training.flip_agreement import (
    FLIP_AXES,
    FlipAgreementError,
    check_flip_options,
    keep_agreed,
    predict_agreed,
    predict_masks,
)
from mim_model.training.inference import predict_probs, weights_input_scale, weights_threshold
from mim_model.training.metrics import image_counts
from mim_model.weights import load_model, load_refiner
from tests.mim_model.sirst_crops import SIRST, needs_sirst


def _blobs() -> tuple[np.ndarray, dict[str, tuple[slice, slice]]]:
    prob = np.zeros((40, 60), np.float32)
    where = {"seen_by_all": (slice(5, 9), slice(5, 9)), "missed_once": (slice(20, 23), slice(30, 34)),
             "one_pixel_each": (slice(30, 36), slice(45, 52))}
    for block in where.values():
        prob[block] = 0.9
    return prob, where


def test_keep_agreed_keeps_whole_components_every_flip_touches() -> None:
    prob, where = _blobs()
    flipped = [np.zeros_like(prob) for _ in range(3)]
    for k, f in enumerate(flipped):
        f[where["seen_by_all"]] = 0.7
        f[31, 46 + k] = 0.6  # one pixel of "one_pixel_each", a different one in each pass
    flipped[0][where["missed_once"]] = 0.95
    flipped[1][where["missed_once"]] = 0.95
    flipped[2][where["missed_once"]] = 0.4  # below the threshold in one pass
    kept = keep_agreed(prob, flipped, 0.5)
    for name in ("seen_by_all", "one_pixel_each"):
        assert kept[where[name]].all()  # the plain pass's whole outline, not the flips'
    assert not kept[where["missed_once"]].any()
    assert kept.sum() == 16 + 42


def test_keep_agreed_with_min_seen_keeps_what_enough_passes_see() -> None:
    prob, where = _blobs()
    flipped = [np.zeros_like(prob) for _ in range(3)]
    for f in flipped:
        f[where["seen_by_all"]] = 0.7
    flipped[0][where["missed_once"]] = 0.95   # seen by two of the three passes
    flipped[1][where["missed_once"]] = 0.95
    flipped[2][31, 46] = 0.6                   # "one_pixel_each" seen by one pass only
    two = keep_agreed(prob, flipped, 0.5, min_seen=2)
    assert two[where["seen_by_all"]].all() and two[where["missed_once"]].all()
    assert not two[where["one_pixel_each"]].any()
    one = keep_agreed(prob, flipped, 0.5, min_seen=1)
    np.testing.assert_array_equal(one, prob > 0.5)
    np.testing.assert_array_equal(keep_agreed(prob, flipped, 0.5, min_seen=3), keep_agreed(prob, flipped, 0.5))
    assert keep_agreed(prob, flipped, 0.5, min_seen=3).sum() == 16
    for bad in (0, 4):
        with pytest.raises(FlipAgreementError, match=f"min_seen: expected 1 to 3 \\(the other answers\\), got {bad}"):
            keep_agreed(prob, flipped, 0.5, min_seen=bad)


def test_keep_agreed_edge_cases() -> None:
    prob, _ = _blobs()
    assert not keep_agreed(np.zeros((5, 5)), [np.ones((5, 5))], 0.5).any()
    np.testing.assert_array_equal(keep_agreed(prob, [], 0.5), prob > 0.5)  # nothing to disagree
    with pytest.raises(InputShapeError, match=r"flipped_probs\[1\]: expected shape \(40, 60\), got \(60, 40\)"):
        keep_agreed(prob, [prob, prob.T], 0.5)
    with pytest.raises(InputShapeError, match="prob: expected a 2-D"):
        keep_agreed(prob[None], [prob], 0.5)


def _detector(images: list[np.ndarray]) -> list[np.ndarray]:
    """Finds bright pixels wherever they are, and also fires at a fixed place of its input
    frame (the kind of blob that depends on orientation, not on the scene)."""
    out = []
    for image in images:
        prob = (image > 0.8).astype(np.float32)
        prob[2:5, 3:7] = 0.9
        out.append(prob)
    return out


def test_predict_agreed_drops_what_moves_with_the_frame() -> None:
    image = np.full((40, 50), 0.2, np.float32)
    image[20:23, 30:33] = 1.0  # the target
    truth = image > 0.8
    probs, masks = predict_agreed(_detector, [image], 0.5)
    np.testing.assert_array_equal(probs[0], _detector([image])[0])  # the plain pass's probabilities
    np.testing.assert_array_equal(masks[0], truth)
    plain_probs, plain_masks = predict_masks(_detector, [image], 0.5, flip_agreement=False)
    assert plain_masks[0][2:5, 3:7].all() and plain_masks[0][truth].all()
    np.testing.assert_array_equal(plain_probs[0], probs[0])
    assert len(FLIP_AXES) == 3


def test_tta_flips_and_agreement_do_not_go_together() -> None:
    check_flip_options(flip_tta=True, flip_agreement=False)
    with pytest.raises(FlipAgreementError, match="flip_agreement: expected without flip_tta"):
        check_flip_options(flip_tta=True, flip_agreement=True)


@needs_sirst
def test_the_packaged_weights_lose_a_false_alarm_and_keep_the_target_on_a_real_image() -> None:
    """SIRST val image Misc_93 (222 x 313): the packaged network + refiner find its target and
    draw one false-alarm object (14 px) that a flipped pass does not see."""
    model, refiner = load_model(), load_refiner()
    image = load_grey01(SIRST / "images" / "Misc_93.png")
    truth = load_mask(SIRST / "masks" / "Misc_93_pixels0.png", image.shape)
    threshold = weights_threshold(model)

    def probabilities(images: list[np.ndarray]) -> list[np.ndarray]:
        return predict_probs(model, images, device="cpu", amp=False, scale=weights_input_scale(model), refiner=refiner)

    probs, masks = predict_agreed(probabilities, [image], threshold)
    plain, agreed = image_counts(probs[0] > threshold, truth), image_counts(masks[0], truth)
    assert plain.n_matched == agreed.n_matched == plain.n_targets == 1
    assert plain.false_alarm_px == 14 and agreed.false_alarm_px == 0
    assert agreed.intersection_px == plain.intersection_px  # the target keeps its whole outline
