"""bench/bench_refiner.py --vote: the majority vote of refiner fits drops a false object that
one fit is sure of, where the mean of their probabilities keeps it (docs/benchmarks.md,
"Refiner ensembles" and "Refiner fits that vote")."""

from __future__ import annotations

import numpy as np

from tests.scripts.bench_module import load_bench


def _bench():
    return load_bench("bench_refiner")


def test_vote_drops_one_fits_confident_false_object_that_the_mean_keeps():
    target = np.zeros((8, 8), bool)
    target[1:3, 1:3] = True
    fits = [np.zeros((8, 8)) for _ in range(3)]
    for fit in fits:
        fit[target] = 0.9
    fits[0][5:7, 5:7] = 0.99   # one fit is sure of a false object
    fits[1][5:7, 5:7] = 0.3    # the other two are lukewarm
    fits[2][5:7, 5:7] = 0.3
    mean = sum(fits) / 3 > 0.5
    voted = _bench().vote_mask(fits, 0.5)
    assert mean[5:7, 5:7].all()
    assert not voted[5:7, 5:7].any()
    assert np.array_equal(voted, target)


def test_vote_needs_more_than_half_of_the_fits():
    bench = _bench()
    on, off = np.ones((2, 2)), np.zeros((2, 2))
    assert bench.vote_mask([on, on, off], 0.5).all()
    assert not bench.vote_mask([on, off, off], 0.5).any()
    assert not bench.vote_mask([on, off], 0.5).any()    # a tie is not a majority
    assert bench.vote_mask([on, on], 0.5).all()
