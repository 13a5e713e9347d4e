"""The outline refiner: its features, identity at start, strips, weights files, and that
fitting it redraws outlines that a network draws too wide (data built with known truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mim_model import MiM, WeightsError
from mim_model.refiner import OutlineRefiner, RefinerConfig, refine_probs, refiner_features
from mim_model.training.metrics import IRSTDMetrics
from mim_model.training.refine import RefinerError, RefinerTrainConfig, fit_refiner, refiner_crop
from mim_model.weights import load_model, load_refiner, read_metadata, save_safetensors


def _perturbed(seed: int = 0) -> OutlineRefiner:
    """A refiner whose head is not zero (an untrained one is the identity)."""
    torch.manual_seed(seed)
    refiner = OutlineRefiner(RefinerConfig(width=8))
    torch.nn.init.normal_(refiner.head.weight, std=0.5)
    return refiner.eval()


def test_config_checks_and_reach() -> None:
    assert RefinerConfig().reach_px == 1 + 2 + 4 + 1 + 7
    assert RefinerConfig.from_json(RefinerConfig(width=8, dilations=(1, 3)).to_json()) == RefinerConfig(8, (1, 3))
    with pytest.raises(ValueError, match="contrast_box_px"):
        RefinerConfig(contrast_box_px=14)
    with pytest.raises(ValueError, match="dilations"):
        RefinerConfig(dilations=())
    with pytest.raises(RefinerError, match=r"refiner training crop_px: expected at least 8 px, got 4$"):
        RefinerTrainConfig(crop_px=4)
    with pytest.raises(RefinerError, match=r"steps: expected an integer >= 1, got 0$"):
        RefinerTrainConfig(steps=0)


def test_features_of_a_known_image() -> None:
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 4] = 0.81  # one bright pixel: mean 0.81 / 81 = 0.01, variance 0.81**2 / 81 - 0.01**2
    prob = torch.full((1, 1, 9, 9), 0.5)
    feats = refiner_features(image, prob, contrast_box_px=3)
    scale = 0.008**0.5 + 1e-3
    assert feats.shape == (1, 4, 9, 9)
    assert feats[0, 0, 4, 4].item() == pytest.approx((0.81 - 0.01) / scale, rel=1e-5)
    assert feats[0, 0, 0, 0].item() == pytest.approx(-0.01 / scale, rel=1e-5)
    assert feats[0, 1, 4, 4].item() == pytest.approx((0.81 - 0.09) / scale, rel=1e-5)  # box mean 0.81 / 9
    assert feats[0, 1, 4, 5].item() == pytest.approx(-0.09 / scale, rel=1e-5)
    assert feats[0, 1, 0, 0].item() == 0.0
    assert torch.all(feats[0, 2] == 0.5) and torch.allclose(feats[0, 3], torch.zeros(9, 9))


def test_an_untrained_refiner_returns_the_network_logit() -> None:
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((2, 1, 40, 40), dtype=np.float32))
    prob = torch.from_numpy(rng.random((2, 1, 40, 40), dtype=np.float32)).clamp(0.01, 0.99)
    logits = OutlineRefiner()(image, prob)
    assert torch.allclose(torch.sigmoid(logits), prob, atol=1e-6)


def test_strips_equal_the_whole_image() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((150, 70), dtype=np.float32)
    prob = rng.random((150, 70), dtype=np.float32)
    refiner = _perturbed()
    whole = refine_probs(refiner, image, prob, strip_px=1000)
    strips = refine_probs(refiner, image, prob, strip_px=16)
    assert not np.allclose(whole, prob, atol=1e-3)  # the perturbed head changes something
    np.testing.assert_allclose(strips, whole, atol=1e-6)


def test_crops_hold_targets_and_keep_features_with_their_mask() -> None:
    features = np.zeros((4, 100, 120), np.float32)
    mask = np.zeros((100, 120), np.float32)
    mask[50:53, 60:63] = 1
    features[0] = mask * 5  # a feature that marks the target: it must turn with the mask
    cfg = RefinerTrainConfig(crop_px=32, near_target_share=1.0, near_radius_px=4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        f, m = refiner_crop(features, mask, cfg, rng)
        assert f.shape == (4, 32, 32) and m.shape == (32, 32)
        assert m.sum() == 9 and np.array_equal(f[0] == 5, m == 1)
    small_f, small_m = refiner_crop(features[:, :20, :20], mask[:20, :20], cfg, rng)  # zero-padded up
    assert small_f.shape == (4, 32, 32) and small_m.shape == (32, 32)


def test_logit_jitter_redraws_probability_and_logit_together() -> None:
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.uniform(0, 1, (1, 1, 40, 40)).astype(np.float32))
    prob = torch.from_numpy(rng.uniform(0.01, 0.99, (1, 1, 40, 40)).astype(np.float32))
    features = refiner_features(image, prob, 15)[0].numpy()
    mask = np.zeros((40, 40), np.float32)
    plain = RefinerTrainConfig(crop_px=40)
    jitter = RefinerTrainConfig(crop_px=40, logit_slope_jitter=0.4, logit_shift_jitter=1.5)
    f_plain, _ = refiner_crop(features, mask, plain, np.random.default_rng(5))
    slopes, shifts = [], []
    for seed in range(20):
        f, _ = refiner_crop(features, mask, jitter, np.random.default_rng(seed))
        whole = _turned_like(f, features)
        np.testing.assert_allclose(f[:2], whole[:2], atol=1e-6)  # the image is left alone
        logit_in, logit_out = whole[3] * 4, f[3] * 4
        np.testing.assert_allclose(f[2], 1 / (1 + np.exp(-logit_out)), atol=1e-5)  # one logit, two channels
        slope, shift = np.polyfit(logit_in.ravel(), logit_out.ravel(), 1)  # an affine redraw of the logit
        assert 0.6 - 1e-4 <= slope <= 1.4 + 1e-4 and -1.5 - 1e-4 <= shift <= 1.5 + 1e-4
        slopes.append(slope)
        shifts.append(shift)
    assert np.ptp(slopes) > 0.2 and np.ptp(shifts) > 1.0  # drawn anew for every crop
    assert f_plain.shape == (4, 40, 40)
    with pytest.raises(RefinerError, match="logit_slope_jitter"):
        RefinerTrainConfig(logit_slope_jitter=1.0)


def _turned_like(crop: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """``whole`` (a crop of the same size) turned and flipped as ``crop`` is (matched on the image channel)."""
    for flip in (False, True):
        for turns in range(4):
            candidate = np.rot90(whole, turns, axes=(1, 2))
            candidate = candidate[:, :, ::-1] if flip else candidate
            if np.allclose(candidate[0], crop[0], atol=1e-6):
                return np.ascontiguousarray(candidate)
    raise AssertionError("the crop is no turn or flip of the image")


def _blob_scene(rng: np.random.Generator, side_px: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image with Gaussian targets on noise; truth = pixels above half a target's peak; the
    'network' draws each target two pixels too wide and blurred (the error to be undone)."""
    yy, xx = np.mgrid[:side_px, :side_px]
    image = 0.2 + 0.02 * rng.standard_normal((side_px, side_px))
    mask = np.zeros((side_px, side_px), bool)
    for _ in range(4):
        cy, cx = rng.uniform(12, side_px - 12, 2)
        sigma, peak = rng.uniform(1.0, 2.2), rng.uniform(0.4, 0.7)
        blob = peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        image += blob
        mask |= blob > peak / 2
    wide = ndimage.binary_dilation(mask, iterations=2).astype(np.float32)
    prob = np.clip(ndimage.gaussian_filter(wide, 0.7) * 0.98 + 0.01, 0, 1)
    return np.clip(image, 0, 1).astype(np.float32), prob.astype(np.float32), mask


def _iou(probs: list[np.ndarray], masks: list[np.ndarray]) -> float:
    metrics = IRSTDMetrics()
    for p, m in zip(probs, masks, strict=True):
        metrics.update(p > 0.5, m)
    return float(metrics.result()["iou"])


def test_fitting_redraws_outlines_drawn_too_wide() -> None:
    rng = np.random.default_rng(0)
    train = [_blob_scene(rng) for _ in range(6)]
    held_out = [_blob_scene(rng) for _ in range(4)]
    cfg = RefinerTrainConfig(steps=120, batch_size=16, crop_px=32, lr=5e-3)
    refiner, records = fit_refiner(*zip(*train), cfg, config=RefinerConfig(width=16), log_every=50)
    assert records[-1]["step"] == 120 and records[-1]["loss"] < records[0]["loss"]
    before = _iou([p for _, p, _ in held_out], [m for *_, m in held_out])
    after = _iou([refine_probs(refiner, i, p) for i, p, _ in held_out], [m for *_, m in held_out])
    assert before < 0.5  # two pixels too wide around targets of a few pixels
    assert after > 0.8 and after > before + 0.4, (before, after)


@pytest.mark.parametrize(("steps", "warmup_share"), [(20, 0.05), (10, 0.1), (2, 0.5), (1, 0.05), (7, 0.3)])
def test_any_valid_schedule_fits_even_one_warm_up_step(steps: int, warmup_share: float) -> None:
    # PyTorch's OneCycleLR divides by zero when pct_start * total_steps is exactly 1
    # (`irscan train-refiner --steps 20` with the default 5 % warm-up)
    image, prob, mask = _blob_scene(np.random.default_rng(1), side_px=40)
    cfg = RefinerTrainConfig(steps=steps, batch_size=2, crop_px=16, warmup_share=warmup_share)
    _, records = fit_refiner([image], [prob], [mask], cfg, config=RefinerConfig(width=8), log_every=steps)
    assert records[-1]["step"] == steps and np.isfinite(records[-1]["loss"])


def test_fit_refuses_mismatched_inputs() -> None:
    with pytest.raises(RefinerError, match="image 0"):
        fit_refiner([np.zeros((8, 8))], [np.zeros((8, 9))], [np.zeros((8, 8), bool)])


def test_weights_file_carries_the_refiner(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MiM(layout="spatial")
    refiner = _perturbed()
    path = save_safetensors(model, tmp_path / "w.safetensors", metadata={"threshold": "0.5", "refiner_train": "{}"},
                            refiner=refiner)
    loaded = load_refiner(path)
    assert loaded is not None and loaded.config == refiner.config
    for name, value in refiner.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value.half().float())
    network = load_model(path)  # the network loads strictly, without the refiner's tensors
    assert not any(k.startswith("refiner") for k in network.state_dict())
    plain = save_safetensors(network, tmp_path / "plain.safetensors", metadata=dict(read_metadata(path)))
    assert load_refiner(plain) is None and {"refiner_config", "refiner_train"}.isdisjoint(read_metadata(plain))
    assert read_metadata(plain)["threshold"] == "0.5"


def test_a_broken_refiner_config_is_one_clear_error(tmp_path: Path) -> None:
    model = MiM(layout="spatial")
    path = save_safetensors(model, tmp_path / "w.safetensors", refiner=_perturbed())
    from safetensors.torch import load_file, save_file

    meta = read_metadata(path)
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata={**meta, "refiner_config": '{"width": 64}'})
    with pytest.raises(WeightsError, match="bad.safetensors: refiner tensors"):
        load_refiner(tmp_path / "bad.safetensors")


def test_a_fit_charging_false_pixels_more_draws_fewer_of_them() -> None:
    """``loss="tversky-fa"`` (false pixels cost 7/3 of missed ones) against SoftIoU, same data,
    seed and steps: on held-out scenes it puts less probability outside the truth, and more
    of the truth's pixels fall below 0.5 (the trade its loss asks for)."""
    rng = np.random.default_rng(0)
    train = [_blob_scene(rng) for _ in range(6)]
    held_out = [_blob_scene(rng) for _ in range(4)]
    false_mass, missed_mass = {}, {}
    for loss in ("softiou", "tversky-fa"):
        cfg = RefinerTrainConfig(steps=120, batch_size=16, crop_px=32, lr=5e-3, loss=loss)
        refiner, _ = fit_refiner(*zip(*train), cfg, config=RefinerConfig(width=16), log_every=120)
        refined = [(refine_probs(refiner, i, p), m) for i, p, m in held_out]
        false_mass[loss] = sum(float(r[~m].sum()) for r, m in refined)
        missed_mass[loss] = sum(float((1 - r[m]).sum()) for r, m in refined)
    assert false_mass["tversky-fa"] < 0.9 * false_mass["softiou"], false_mass  # 0.81 at writing
    assert missed_mass["tversky-fa"] > 1.1 * missed_mass["softiou"], missed_mass  # 1.27
    with pytest.raises(RefinerError, match=r"refiner training loss: expected one of softiou, tversky-fa, got 'bce'$"):
        RefinerTrainConfig(loss="bce")


def test_a_folder_given_as_out_is_named_a_folder(tmp_path: Path) -> None:
    from mim_model.training.refine import train_refiner

    (tmp_path / "out").mkdir()
    with pytest.raises(RefinerError, match=r"out .*out: expected a file path, got a folder$"):
        train_refiner(tmp_path / "no-data", "train", tmp_path / "out", overwrite=False)
