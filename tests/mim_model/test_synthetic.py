"""Synthetic training crops: real SIRST train targets on real satellite IR backgrounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from mim_model.training.data import Augment, DatasetError, SirstSplit, TrainCrops
from mim_model.training.synthetic import (
    SyntheticSource,
    SyntheticSpec,
    TargetChip,
    extract_chips,
    load_background,
    synthetic_sample,
)
from mim_model.training.train import TrainConfig, TrainError, export, train

from .sirst_crops import SIRST, needs_sirst, tiny_train_config

GEO = SIRST.parent / "geo-ir-samples"
L8_B10 = GEO / "landsat8_LC80200392015216LGN00_crop" / "l8_B10.tif"
needs_geo = pytest.mark.skipif(not L8_B10.is_file(), reason="geo-ir-samples not found at ../shared/data")


def _square_chip(side: int = 5) -> TargetChip:
    mask = np.zeros((side + 6, side + 6), bool)
    mask[3 : 3 + side, 3 : 3 + side] = True
    contrast = np.where(mask, 0.4, 0.0).astype(np.float32)
    contrast[3 + side // 2, 3 + side // 2] = 0.5  # a peak
    return TargetChip(contrast, mask)


def test_pasted_targets_sit_on_the_background_with_the_drawn_contrast() -> None:
    background = np.full((300, 300), 0.3, np.float32)
    spec = SyntheticSpec(p_synthetic=1.0, contrast_range=(0.2, 0.4), max_targets=3)
    for seed in range(20):
        image, mask = synthetic_sample([background], [_square_chip()], 128, spec, np.random.default_rng(seed), 1.0)
        assert image.shape == mask.shape == (128, 128) and image.dtype == mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() >= 25
        np.testing.assert_allclose(image[mask == 0], 0.3, atol=1e-6)  # background untouched elsewhere
        peak = image[mask == 1].max() - 0.3
        assert 0.2 - 1e-5 <= peak <= 0.4 + 1e-5, (seed, peak)
        assert image[mask == 1].min() > 0.3  # every target pixel brighter than the background
    again = synthetic_sample([background], [_square_chip()], 128, spec, np.random.default_rng(3), 1.0)
    first = synthetic_sample([background], [_square_chip()], 128, spec, np.random.default_rng(3), 1.0)
    np.testing.assert_array_equal(again[0], first[0])  # a pure function of the seed


def test_max_targets_bounds_the_targets_pasted_per_crop() -> None:
    background = np.full((300, 300), 0.3, np.float32)
    for max_targets in (1, 12):
        spec = SyntheticSpec(p_synthetic=1.0, contrast_range=(0.3, 0.3), max_targets=max_targets)
        counts = [ndimage.label(synthetic_sample([background], [_square_chip()], 256, spec,
                                                 np.random.default_rng(seed), 1.0)[1])[1] for seed in range(30)]
        assert 1 <= min(counts) and max(counts) <= max_targets, (max_targets, counts)  # touching chips merge
        assert max(counts) >= min(max_targets, 8), (max_targets, counts)  # up to 12 drawn, not stuck at 4


def test_scale_resizes_background_window_and_targets() -> None:
    ramp = np.tile(np.linspace(0, 1, 400, dtype=np.float32), (400, 1))
    spec = SyntheticSpec(p_synthetic=1.0, contrast_range=(0.5, 0.5), max_targets=1)
    _, mask1 = synthetic_sample([ramp], [_square_chip(6)], 128, spec, np.random.default_rng(0), 1.0)
    _, mask2 = synthetic_sample([ramp], [_square_chip(6)], 128, spec, np.random.default_rng(0), 2.0)
    assert mask1.sum() == 36 and 120 <= mask2.sum() <= 170  # a 6x6 target becomes ~12x12


def _max_step(image: np.ndarray) -> float:
    """Largest difference between 4-neighbouring pixels."""
    return float(max(np.abs(np.diff(image, axis=0)).max(), np.abs(np.diff(image, axis=1)).max()))


def test_native_paste_blurs_targets_into_the_ground_network_paste_does_not() -> None:
    """A flat 3x3 target 0.6 above a flat ground, crop rescaled by 2. Pasted at native
    resolution and rescaled with the ground (as a scanned scene reaches the network), the
    target's edge spreads onto the ground around its mask (bilinear doubling puts a quarter
    of the step, 0.15, on the next pixel out); pasted after the rescaling (runs 1-14) the
    ground next to the mask stays exactly the ground: a hard outer edge that no rescaled
    real target has."""
    ground = np.full((200, 200), 0.2, np.float32)
    chip = TargetChip(np.where(np.pad(np.ones((3, 3), bool), 3), 0.5, 0.0).astype(np.float32),
                      np.pad(np.ones((3, 3), bool), 3))
    for paste_at, skirt in (("native", 0.15), ("network", 0.0)):
        spec = SyntheticSpec(p_synthetic=1.0, contrast_range=(0.6, 0.6), max_targets=1, paste_at=paste_at)
        for seed in range(5):
            image, mask = synthetic_sample([ground], [chip], 128, spec, np.random.default_rng(seed), 2.0)
            # the mask is the target doubled: 6 x 6 pixels (bilinear > 0.5 of a 3 x 3 block)
            assert mask.sum() == 36, (paste_at, seed, mask.sum())
            np.testing.assert_allclose(image[mask == 1].max(), 0.8, atol=1e-5)
            np.testing.assert_allclose(image[mask == 0].max() - 0.2, skirt, atol=1e-5, err_msg=paste_at)
            assert _max_step(image) < 0.6 - 1e-3  # the inner profile is rescaled in both


def test_native_paste_keeps_a_target_that_shrinking_would_lose() -> None:
    ground = np.full((400, 400), 0.1, np.float32)
    dot = TargetChip(np.where(np.pad(np.ones((1, 1), bool), 3), 0.5, 0.0).astype(np.float32),
                     np.pad(np.ones((1, 1), bool), 3))
    spec = SyntheticSpec(p_synthetic=1.0, contrast_range=(0.5, 0.5), max_targets=1, paste_at="native")
    for seed in range(5):
        image, mask = synthetic_sample([ground], [dot], 128, spec, np.random.default_rng(seed), 0.4)
        assert mask.sum() == 1, (seed, mask.sum())  # one pixel: the shrunken target's peak
        assert image[mask == 1][0] == image.max() > 0.1


def test_paste_at_is_checked() -> None:
    with pytest.raises(ValueError, match="paste_at: expected one of network, native, got 'scene'"):
        SyntheticSpec(paste_at="scene")


def test_busy_targets_go_to_the_busy_part_of_the_crop() -> None:
    ground = np.full((128, 128), 0.3, np.float32)
    ground[40:88, 40:88] = np.where(np.arange(48) % 2 == 0, 0.3, 0.5)[None, :]  # a striped square in the middle
    near_square = np.zeros((128, 128), bool)
    near_square[40 - 16 : 88 + 16, 40 - 16 : 88 + 16] = True  # the square grown by the 16 px margin
    outside = {}
    for busy_share in (0.0, 1.0):
        spec = SyntheticSpec(p_synthetic=1.0, contrast_range=(0.3, 0.3), max_targets=1, busy_share=busy_share)
        masks = [synthetic_sample([ground], [_square_chip()], 128, spec, np.random.default_rng(seed), 1.0)[1]
                 for seed in range(20)]  # the square stays in the middle under the crop's flips and turns
        outside[busy_share] = sum(bool((m[~near_square] > 0).any()) for m in masks)
    assert outside[1.0] == 0, outside  # every busy target overlaps the square's surroundings
    assert outside[0.0] >= 5, outside  # uniform places do not


def test_busy_targets_have_the_drawn_signal_to_clutter_ratio_within_the_contrast_range() -> None:
    stripes = np.tile(np.where(np.arange(300) % 2 == 0, 0.3, 0.5).astype(np.float32), (300, 1))  # std 0.1
    peaks = {}
    for scr, contrast_range in (((3.0, 3.0), (0.05, 0.9)), ((3.0, 3.0), (0.05, 0.15)), ((1.0, 1.0), (0.05, 0.9))):
        spec = SyntheticSpec(p_synthetic=1.0, contrast_range=contrast_range, max_targets=1, busy_share=1.0,
                             busy_scr_range=scr)
        samples = [synthetic_sample([stripes], [_square_chip()], 128, spec, np.random.default_rng(seed), 1.0)
                   for seed in range(10)]
        peaks[scr, contrast_range] = [float(image[mask == 1].max()) for image, mask in samples]
    # a peak of ratio x std (0.1) over the local median (0.3, 0.4 or 0.5), never below the stripes' 0.5
    assert all(0.59 <= p <= 0.81 for p in peaks[(3.0, 3.0), (0.05, 0.9)]), peaks
    assert all(0.5 <= p <= 0.66 for p in peaks[(3.0, 3.0), (0.05, 0.15)]), peaks  # clipped to 0.15
    assert all(0.5 <= p <= 0.61 for p in peaks[(1.0, 1.0), (0.05, 0.9)]), peaks


def test_busy_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"busy_share: expected a share in \[0, 1\], got 1.5"):
        SyntheticSpec(busy_share=1.5)
    with pytest.raises(ValueError, match=r"busy_scr_range: expected 0 < low <= high, got \(4.0, 2.0\)"):
        SyntheticSpec(busy_scr_range=(4.0, 2.0))


@needs_geo
def test_load_background_stretches_a_real_landsat_band(tmp_path: Path) -> None:
    band = load_background(L8_B10)
    assert band.shape == (603, 627) and band.dtype == np.float32
    assert band.min() >= 0.0 and band.max() <= 1.0
    assert 0.003 <= float((band == 0).mean()) <= 0.02  # the 0.5th percentile clips ~0.5 %
    png = tmp_path / "flat.png"
    Image.fromarray(np.full((80, 80), 7, np.uint8)).save(png)
    with pytest.raises(DatasetError, match=r"flat.png: background raster is constant \(value 7.0\)"):
        load_background(png)
    with pytest.raises(DatasetError, match="nowhere.tif: background raster not found"):
        load_background(tmp_path / "nowhere.tif")


@needs_sirst
def test_chips_come_from_the_split_masks(tiny_sirst: Path) -> None:
    split = SirstSplit.load(tiny_sirst, "train")
    chips = extract_chips(split)
    assert 4 <= len(chips) and all(c.mask.any() for c in chips)
    for chip in chips:
        assert chip.contrast.shape == chip.mask.shape
        assert not chip.contrast[~chip.mask].any() and chip.contrast.max() > 0.02
    assert sum(int(c.mask.sum()) for c in chips) <= sum(int(m.sum()) for m in split.masks)


@needs_sirst
@needs_geo
def test_train_crops_mix_synthetic_samples_and_training_runs(tiny_sirst: Path, tmp_path: Path) -> None:
    split = SirstSplit.load(tiny_sirst, "train")
    spec = SyntheticSpec(p_synthetic=0.5)
    source = SyntheticSource.build([str(L8_B10)], split, spec)
    made = []

    class Counting(SyntheticSource):
        def sample(self, crop_px, rng, scale):  # noqa: ANN001, ANN202
            made.append(scale)
            return super().sample(crop_px, rng, scale)

    crops = TrainCrops(split, 64, Augment(), base_scale=2.0,
                       synthetic=Counting(source.backgrounds, source.chips, source.spec))
    items = [crops[(0, seed)] for seed in range(40)]
    assert 10 <= len(made) <= 30  # about half of the crops are synthetic
    assert all(2.0 * 0.6 <= s <= 2.0 * 1.6 for s in made)  # at the input scale times the drawn factor
    assert all(img.shape == msk.shape == (1, 64, 64) for img, msk in items)
    assert torch.equal(crops[(0, 7)][0], items[7][0])  # still a pure function of the seed

    with pytest.raises(TrainError, match="synthetic_backgrounds: expected at least one raster"):
        tiny_train_config(tiny_sirst, tmp_path / "x", synthetic=spec)
    cfg = tiny_train_config(tiny_sirst, tmp_path / "syn", epochs=1, eval_every=1, synthetic=spec,
                  synthetic_backgrounds=(str(L8_B10),))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert train(cfg)["finished"]
    card = Path(export(tmp_path / "syn" / "best.pt", tmp_path / "w" / "syn.safetensors")["card"]).read_text()
    assert "Synthetic crops: 50% of the crops are train-split targets pasted onto l8_B10.tif" in card
