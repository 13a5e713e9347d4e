"""bench/bench_accuracy.py protocol: ACM's test transform resizes the truth nearest and the
answer bilinear to a square; known answers on tiny arrays."""

from __future__ import annotations

import numpy as np

from tests.scripts.bench_module import load_bench


def _bench():
    return load_bench("bench_accuracy")


def test_mask_resized_nearest_keeps_its_blocks_and_prob_bilinear_stays_in_range():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    prob = mask.astype(np.float32)
    bench = _bench()
    prob_resized, mask_resized = bench.resized_bilinear(prob, 8), bench.resized_nearest(mask, 8)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    assert mask_resized.shape == (8, 8) and mask_resized.dtype == bool
    assert np.array_equal(mask_resized, expected)
    assert prob_resized.shape == (8, 8)
    assert 0.0 <= prob_resized.min() and prob_resized.max() <= 1.0
    assert np.array_equal(prob_resized > 0.5, expected)   # a symmetric blur of a block, cut at half


def test_non_square_image_goes_to_the_square():
    mask = np.zeros((3, 6), bool)
    mask[1, 2:4] = True
    bench = _bench()
    prob_resized, mask_resized = bench.resized_bilinear(mask.astype(np.float32), 6), bench.resized_nearest(mask, 6)
    assert mask_resized.shape == prob_resized.shape == (6, 6)
    expected = np.zeros((6, 6), bool)
    expected[2:4, 2:4] = True                    # the height doubles, the width stays
    assert np.array_equal(mask_resized, expected)
