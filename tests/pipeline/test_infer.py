"""Tile inference helpers: a batch padded to the actors' fixed size gives the same tiles;
flip averaging; the input scale (the weights' or the user's)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mim_model.weights import (
    DEFAULT_SCAN_WEIGHTS_PATH,
    DEFAULT_WEIGHTS_PATH,
    read_metadata,
    soup_runs,
    weights_sha256,
)
from pipeline.errors import InputError
from pipeline.infer import (
    InferenceSpec,
    TilePredictor,
    check_tile_scale,
    pad_batch,
    resolve_weights_path,
)


def test_pad_batch_appends_empty_tiles_only_when_short() -> None:
    tiles = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    padded = pad_batch(tiles, 5)
    assert padded.shape == (5, 64, 64) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:3], tiles)
    assert not padded[3:].any()
    assert pad_batch(tiles, 3) is tiles and pad_batch(tiles, 2) is tiles


def test_scan_runs_its_own_packaged_weights_unless_told_otherwise() -> None:
    assert resolve_weights_path(InferenceSpec()) == DEFAULT_SCAN_WEIGHTS_PATH
    chosen = InferenceSpec(weights_path=str(DEFAULT_WEIGHTS_PATH))
    assert resolve_weights_path(chosen) == DEFAULT_WEIGHTS_PATH
    predictor = TilePredictor(InferenceSpec(device="cpu", torch_threads=1))
    assert predictor.weights_sha256 == weights_sha256(DEFAULT_SCAN_WEIGHTS_PATH) != weights_sha256(DEFAULT_WEIGHTS_PATH)
    scan, sirst = read_metadata(DEFAULT_SCAN_WEIGHTS_PATH), read_metadata(DEFAULT_WEIGHTS_PATH)
    # the model loaded is the scan's: its stored threshold (0.65) is not the SIRST weights' (0.5)
    assert predictor.threshold == float(scan["threshold"]) != float(sirst["threshold"])
    # the same network at the same input scale; an average of seven runs, all with many targets
    # a synthetic crop, six of them on 1024 px crops (the scan's own input size), four with part
    # of their targets on busy ground and one trained with the Tversky loss
    assert scan["mim_config"] == sirst["mim_config"] and scan["input_scale"] == sirst["input_scale"] == "2.0"
    runs = soup_runs(scan)
    assert len(runs) == 7 and all(share == pytest.approx(1 / 7, rel=1e-6) for _, share in runs)
    configs = [member["train_config"] for member, _ in runs]
    assert sorted(c["crop_px"] for c in configs) == [512] + [1024] * 6
    assert all(c["synthetic"]["max_targets"] >= 24 for c in configs)
    assert sum(c["synthetic"].get("busy_share", 0) > 0 for c in configs) == 4
    assert [c.get("loss", "softiou") for c in configs].count("tversky") == 1


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


def test_windowed_takes_each_pixel_from_a_window_run_alone() -> None:
    """Every kept pixel is the network's answer on one window around it: the same value as
    running that window by itself, at least ``halo`` from the window's cuts; pixels outside
    the kept part of the tile stay 0, and an input that depends on its whole frame shows it."""
    from mim_model.training.inference import axis_tiles, windowed

    def frame_dependent(x: torch.Tensor) -> torch.Tensor:  # the answer depends on the whole window
        return torch.sigmoid(x[:, :1] - x[:, :1].mean(dim=(2, 3), keepdim=True))

    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    margin, window, halo = 48, 64, 16
    out = windowed(frame_dependent, x, window, halo, margin)
    first = margin - halo
    spans = [(first + s, first + k0, first + k1) for s, k0, k1 in axis_tiles(256 - 2 * first, window, halo)]
    covered = torch.zeros(256, 256, dtype=torch.int32)
    for r0, rk0, rk1 in spans:
        for c0, ck0, ck1 in spans:
            alone = frame_dependent(x[:, :, r0 : r0 + window, c0 : c0 + window])
            torch.testing.assert_close(out[:, :, rk0:rk1, ck0:ck1], alone[:, :, rk0 - r0 : rk1 - r0, ck0 - c0 : ck1 - c0],
                                       rtol=0, atol=1e-6)
            covered[rk0:rk1, ck0:ck1] += 1
        low, high = max(rk0, margin), min(rk1, 256 - margin)  # the kept rows the caller uses
        assert low - r0 >= halo and r0 + window - high >= halo
    assert covered[first : 256 - first, first : 256 - first].eq(1).all()  # a partition of the kept part
    assert covered.sum() == (256 - 2 * first) ** 2 and not out[:, :, :first].any() and not out[:, :, :, -first:].any()
    assert not torch.allclose(out, frame_dependent(x))  # whole-frame context differs


def test_windowed_runs_windows_in_fixed_size_groups() -> None:
    from mim_model.training.inference import windowed

    shapes: list[tuple[int, ...]] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return x[:, :1]

    x = torch.rand(1, 3, 192, 192)
    out = windowed(record, x, 64, 16, 16, max_windows=4)  # 5 x 5 windows: 6 groups of 4, the last padded
    assert shapes == [(4, 3, 64, 64)] * 7 and torch.equal(out[:, :, 16:-16, 16:-16], x[:, :1, 16:-16, 16:-16])
    with pytest.raises(ValueError, match="window"):
        windowed(record, x, 64, 16, 8)  # the window's halo reaches past the tile


def test_window_predictor_matches_a_scan_of_small_tiles() -> None:
    """--window-px 64 --window-halo-px 16 inside 128 px tiles gives, on the core, what the
    network gives on 64 px tiles run alone: exactly at input scale 1, and up to the bilinear
    resize's edges at the weights' scale 2 (the windows are cut from the tile resized whole)."""
    rng = np.random.default_rng(5)
    tiles = (0.2 + 0.05 * rng.standard_normal((1, 128, 128))).astype(np.float32)
    tiles[:, 60:63, 40:43] += 0.6
    for input_scale, atol in ((1.0, 1e-4), (2.0, 2e-2)):
        spec = InferenceSpec(device="cpu", amp=False, torch_threads=2, input_scale=input_scale)
        whole = TilePredictor(spec)
        small = TilePredictor(dataclasses.replace(spec, window_px=64, window_halo_px=16), margin_px=32)
        probs = small.predict(tiles)
        alone = whole.predict(np.ascontiguousarray(tiles[:, 16:80, 16:80]))
        # the window at tile pixel 16 keeps tile pixels 32..64
        np.testing.assert_allclose(probs[:, 32:64, 32:64], alone[:, 16:48, 16:48], rtol=0, atol=atol)
        assert probs[0, 61, 41] > 0.5  # the target is in that core
        assert not np.allclose(probs[:, 32:96, 32:96], whole.predict(tiles)[:, 32:96, 32:96], atol=1e-3)


def test_window_options_are_checked() -> None:
    from pipeline.config import ScanConfig
    from pipeline.tiling import TilingSpec

    with pytest.raises(InputError, match="window_px: expected more than 2 \\* window_halo_px = 32, got 32"):
        InferenceSpec(window_px=32, window_halo_px=16)
    with pytest.raises(InputError, match="window_halo_px: expected >= 0, got -1"):
        InferenceSpec(window_halo_px=-1)
    with pytest.raises(InputError, match="window_px: expected at most tile_px \\(256\\), got 320"):
        ScanConfig(tiling=TilingSpec(256, 64), inference=InferenceSpec(window_px=320))
    with pytest.raises(InputError, match="window_halo_px: expected at most halo_px \\(8\\), got 16"):
        ScanConfig(tiling=TilingSpec(256, 8), inference=InferenceSpec(window_px=64))
    with pytest.raises(InputError, match="window_px: windows are resized by input_scale 1.5; 64 px becomes 96 px"):
        check_tile_scale(InferenceSpec(input_scale=1.5, window_px=64), 128)
    a = ScanConfig(inference=InferenceSpec(window_px=64)).output_fingerprint("abc")
    assert a != ScanConfig(inference=InferenceSpec(window_px=128)).output_fingerprint("abc")
    assert a != ScanConfig(inference=InferenceSpec(window_px=64, window_halo_px=24)).output_fingerprint("abc")


def test_a_refiner_carried_by_the_weights_works_on_the_native_tile(tmp_path) -> None:  # noqa: ANN001
    from mim_model.refiner import OutlineRefiner, RefinerConfig, refine_probs
    from mim_model.weights import load_model, save_safetensors

    torch.manual_seed(0)
    refiner = OutlineRefiner(RefinerConfig(width=8))
    torch.nn.init.normal_(refiner.head.weight, std=0.5)
    network = load_model(DEFAULT_SCAN_WEIGHTS_PATH)
    path = save_safetensors(network, tmp_path / "with_refiner.safetensors",
                            metadata=dict(read_metadata(DEFAULT_SCAN_WEIGHTS_PATH)), refiner=refiner)
    plain = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2))
    refined = TilePredictor(InferenceSpec(device="cpu", amp=False, torch_threads=2, weights_path=str(path)))
    assert plain.refiner is None and refined.refiner is not None
    rng = np.random.default_rng(3)
    tiles = (0.2 + 0.05 * rng.standard_normal((2, 64, 64))).astype(np.float32)
    tiles[:, 20:23, 40:43] += 0.6
    network_probs = plain.predict(tiles)
    got = refined.predict(tiles)
    assert not np.allclose(got, network_probs, atol=1e-3)
    # the refiner of the file (float16 tensors), on each native tile and the network's probabilities
    for tile, prob, out in zip(tiles, network_probs, got, strict=True):
        np.testing.assert_allclose(out, refine_probs(refined.refiner, tile, prob), atol=1e-5)
