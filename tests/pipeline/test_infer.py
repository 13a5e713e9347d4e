"""Tile inference helpers: a batch padded to the actors' fixed size gives the same tiles;
flip averaging; the input scale (the weights' or the user's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.infer import InferenceSpec, TilePredictor, check_tile_scale, pad_batch


def test_pad_batch_appends_empty_tiles_only_when_short() -> None:
    tiles = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    padded = pad_batch(tiles, 5)
    assert padded.shape == (5, 64, 64) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:3], tiles)
    assert not padded[3:].any()
    assert pad_batch(tiles, 3) is tiles and pad_batch(tiles, 2) is tiles


def test_padded_batch_gives_the_same_probabilities_as_the_short_one() -> None:
    torch.manual_seed(0)
    predictor = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2))
    rng = np.random.default_rng(1)
    tiles = (0.2 + 0.05 * rng.standard_normal((3, 64, 64))).astype(np.float32)
    tiles[:, 30:33, 30:33] += 0.6  # a small bright target in each tile
    short = predictor.predict(tiles)
    padded = predictor.predict(pad_batch(tiles, 8))[:3]
    assert short.shape == (3, 64, 64)
    # eval mode: a tile's result does not depend on the other tiles of its batch
    np.testing.assert_allclose(padded, short, rtol=0, atol=1e-5)
    assert short[:, 31, 31].min() > short[:, 5, 5].max()  # the network sees the targets


def test_flip_tta_averages_the_tile_and_its_flips_mapped_back() -> None:
    predictor = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2))
    tta = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2, flip_tta=True))
    rng = np.random.default_rng(2)
    tiles = (0.2 + 0.05 * rng.standard_normal((2, 64, 64))).astype(np.float32)
    tiles[:, 10:13, 40:43] += 0.6  # off-centre: a wrong flip-back would move it
    by_hand = np.mean([
        predictor.predict(tiles),
        predictor.predict(np.ascontiguousarray(tiles[:, :, ::-1]))[:, :, ::-1],
        predictor.predict(np.ascontiguousarray(tiles[:, ::-1, :]))[:, ::-1, :],
        predictor.predict(np.ascontiguousarray(tiles[:, ::-1, ::-1]))[:, ::-1, ::-1],
    ], axis=0)
    averaged = tta.predict(tiles)
    np.testing.assert_allclose(averaged, by_hand, rtol=0, atol=1e-5)
    assert not np.allclose(averaged, predictor.predict(tiles), atol=1e-4)  # the flips change the result
    assert averaged[:, 11, 41].min() > averaged[:, 50, 10].max()


def test_flip_averaged_maps_each_flip_back() -> None:
    from mim_model.training.inference import flip_averaged

    ramp = torch.arange(16.0).reshape(1, 1, 4, 4)

    def position_weighted(x: torch.Tensor) -> torch.Tensor:  # not flip-equivariant
        return x * ramp

    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 1] = 1.0
    out = flip_averaged(position_weighted, x, True)
    # the pixel at (0, 1) is weighted by ramp at (0, 1), (0, 2), (3, 1), (3, 2) in the four flips
    assert out[0, 0, 0, 1].item() == (1 + 2 + 13 + 14) / 4
    assert out.sum().item() == out[0, 0, 0, 1].item()  # nothing lands elsewhere
    assert torch.equal(flip_averaged(position_weighted, x, False), x * ramp)


def test_input_scale_override_resizes_tiles_by_the_given_factor() -> None:
    """The packaged weights run at their stored scale 2; --input-scale 2 is the same path,
    1 runs the network on the tile as it is, 3 on the tile resized by 3 and back."""
    from mim_model.training.inference import model_probabilities
    from mim_model.training.preprocess import to_model_input

    rng = np.random.default_rng(4)
    tiles = (0.2 + 0.05 * rng.standard_normal((2, 64, 64))).astype(np.float32)
    tiles[:, 20:23, 40:43] += 0.6
    stored = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2))
    assert stored.input_scale == 2.0
    same = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2, input_scale=2.0))
    np.testing.assert_array_equal(same.predict(tiles), stored.predict(tiles))

    native = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2, input_scale=1.0))
    with torch.inference_mode():
        by_hand = model_probabilities(stored.model, to_model_input(torch.from_numpy(tiles)[:, None]),
                                      torch.device("cpu"), False)[:, 0].numpy()
    np.testing.assert_allclose(native.predict(tiles), by_hand, rtol=0, atol=1e-6)

    x = torch.from_numpy(tiles)[:, None]
    big = torch.nn.functional.interpolate(x, size=(192, 192), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        probs = model_probabilities(stored.model, to_model_input(big), torch.device("cpu"), False)
    back = torch.nn.functional.interpolate(probs, size=(64, 64), mode="bilinear", align_corners=False,
                                           antialias=True)[:, 0].numpy()
    finer = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2, input_scale=3.0))
    np.testing.assert_allclose(finer.predict(tiles), back, rtol=0, atol=1e-6)
    assert not np.allclose(back, stored.predict(tiles), atol=1e-3)


def test_input_scale_is_checked_against_the_tile() -> None:
    assert check_tile_scale(InferenceSpec(), 512) == 2.0  # the packaged weights' scale
    assert check_tile_scale(InferenceSpec(input_scale=2.5), 512) == 2.5  # 1280 px
    with pytest.raises(InputError, match="tiles are resized by input_scale 1.5; 64 px becomes 96 px"):
        check_tile_scale(InferenceSpec(input_scale=1.5), 64)
    for bad in (0.0, 0.1, 9.0, float("nan")):
        with pytest.raises(InputError, match="input_scale: expected a factor from 0.25 to 8"):
            InferenceSpec(input_scale=bad)


def test_input_scale_is_part_of_the_output_fingerprint() -> None:
    """A resumed scan must not mix tiles run at two scales; the default keeps the fingerprint
    that outputs written before the option existed carry."""
    import hashlib
    import json
    from dataclasses import asdict

    from pipeline.config import ScanConfig

    default = ScanConfig()
    before_the_option = {
        "tiling": asdict(default.tiling), "normalization": asdict(default.normalization), "band": 1,
        "threshold": None, "amp": True, "flip_tta": False, "weights_sha256": "abc",
    }
    assert default.output_fingerprint("abc") == hashlib.sha256(
        json.dumps(before_the_option, sort_keys=True).encode()).hexdigest()[:16]
    scaled = ScanConfig(inference=InferenceSpec(input_scale=2.5))
    assert scaled.output_fingerprint("abc") != default.output_fingerprint("abc")
    assert scaled.output_fingerprint("abc") == ScanConfig(inference=InferenceSpec(input_scale=2.5)).output_fingerprint("abc")
