"""Tile inference helpers: a batch padded to the actors' fixed size gives the same tiles."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.infer import InferenceSpec, TilePredictor, pad_batch


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
