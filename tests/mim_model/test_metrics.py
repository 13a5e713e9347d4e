"""IRSTD metrics on hand-made masks whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mim_model.errors import InputShapeError
from mim_model.training.metrics import IRSTDMetrics, ThresholdSweep, image_counts, match_components


def blank(h: int = 40, w: int = 50) -> np.ndarray:
    return np.zeros((h, w), dtype=bool)


def test_iou_is_dataset_level_and_niou_is_per_image_mean() -> None:
    # image 1: prediction equals the 2x2 target -> inter 4, union 4
    g1, p1 = blank(), blank()
    g1[5:7, 5:7] = True
    p1[5:7, 5:7] = True
    # image 2: 1-px target, 3-px prediction covering it -> inter 1, union 3
    g2, p2 = blank(), blank()
    g2[20, 20] = True
    p2[20, 19:22] = True
    m = IRSTDMetrics()
    m.update(p1, g1)
    m.update(p2, g2)
    r = m.result()
    assert r["intersection_px"] == 5 and r["union_px"] == 7
    assert r["iou"] == pytest.approx(5 / 7)  # not the mean (1 + 1/3) / 2
    assert r["niou"] == pytest.approx((1 + 1 / 3) / 2)
    assert r["n_images"] == 2


def test_image_with_empty_union_counts_zero_in_niou() -> None:
    g, p = blank(), blank()
    g[3, 3] = p[3, 3] = True
    m = IRSTDMetrics()
    m.update(p, g)  # IoU 1
    m.update(blank(), blank())  # nothing at all: counts 0, as in ACM
    r = m.result()
    assert r["niou"] == pytest.approx(0.5)
    assert r["iou"] == pytest.approx(1.0)
    assert r["pd"] == 1.0 and r["fa"] == 0.0


def test_pd_fa_match_distance_is_strictly_below_3px() -> None:
    h, w = 60, 80
    g, p = blank(h, w), blank(h, w)
    g[10:13, 10:13] = True  # target A, centroid (11, 11)
    p[12:15, 10:13] = True  # centroid (13, 11): distance 2 -> found
    g[30, 30] = True  # target B, centroid (30, 30)
    p[33, 30] = True  # centroid (33, 30): distance exactly 3 -> not found, false alarm
    p[50:51, 60:65] = True  # far away, 5 px -> false alarm
    c = image_counts(p, g)
    assert (c.n_targets, c.n_matched) == (2, 1)
    assert c.false_alarm_px == 1 + 5
    m = IRSTDMetrics()
    m.add_counts(c)
    r = m.result()
    assert r["pd"] == pytest.approx(0.5)
    assert r["fa"] == pytest.approx(6 / (h * w))


def test_components_are_eight_connected() -> None:
    g, p = blank(), blank()
    g[5, 5] = True
    p[5, 5] = p[6, 6] = True  # diagonal neighbours: one component, centroid (5.5, 5.5)
    assert match_components(p, g) == (1, 1, 0)
    g2 = blank()
    g2[5, 5] = g2[6, 6] = True  # the target is one object too
    assert match_components(g2, g2) == (1, 1, 0)


def test_first_match_wins() -> None:
    # two targets 2 px apart, one prediction between them: the first target (raster order)
    # takes it, the second is missed; nothing left over.
    g, p = blank(), blank()
    g[10, 10] = True
    g[10, 12] = True
    p[10, 11] = True
    assert match_components(p, g) == (2, 1, 0)
    # one target, two predictions in range: the first in label order is matched, the
    # other is a false alarm (its 2 px counted).
    g, p = blank(), blank()
    g[20, 20] = True
    p[19, 20] = True  # label 1 (raster order)
    p[21, 19:21] = True  # label 2, 2 px
    assert match_components(p, g) == (1, 1, 2)


def test_fa_divides_by_real_pixels_of_all_images() -> None:
    m = IRSTDMetrics()
    g1, p1 = blank(10, 20), blank(10, 20)
    p1[0, 0] = True  # 1 false-alarm px, no targets
    g2, p2 = blank(30, 10), blank(30, 10)
    g2[4, 4] = True
    p2[4, 4] = True
    m.update(p1, g1)
    m.update(p2, g2)
    r = m.result()
    assert r["total_px"] == 200 + 300
    assert r["fa"] == pytest.approx(1 / 500)
    assert r["pd"] == 1.0 and r["n_targets"] == 1


def test_missed_target_and_empty_prediction() -> None:
    g = blank()
    g[7:9, 7:9] = True
    r = IRSTDMetrics()
    r.update(blank(), g)
    out = r.result()
    assert out["iou"] == 0.0 and out["pd"] == 0.0 and out["fa"] == 0.0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(InputShapeError, match=r"\(40, 50\) and \(40, 51\)"):
        image_counts(blank(), blank(40, 51))
    with pytest.raises(InputShapeError, match="2-D"):
        image_counts(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))


def test_threshold_sweep_picks_best_iou() -> None:
    g = blank()
    g[10:12, 10:12] = True
    prob = np.zeros(g.shape, dtype=np.float32)
    prob[10:12, 10:12] = 0.6
    prob[12, 10:12] = 0.45  # a fringe that only low thresholds keep
    sweep = ThresholdSweep([0.4, 0.5, 0.7])
    sweep.update(prob, g)
    t, r = sweep.best("iou")
    assert t == 0.5 and r["iou"] == pytest.approx(1.0)
    assert sweep.results()[0.4]["iou"] == pytest.approx(4 / 6)
    assert sweep.results()[0.7]["iou"] == 0.0
