"""pipeline.vectorize: objects across chunk borders are reported once, whole, with exact stats."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.errors import InputError
from pipeline.grid import SceneGrid
from pipeline.stitch import MASK_NODATA
from pipeline.tiling import TilingSpec
from pipeline.vectorize import (
    Detection,
    vectorize_chunk,
    vectorize_chunks,
    vectorize_ref,
    vectorize_store,
)
from pipeline.write_zarr import MaskStore, create_mask_store

H, W = 100, 90
SPEC = TilingSpec(64, 16)  # core (chunk) 32 x 32 -> 4 x 3 chunks


def _store(path: Path, mask: np.ndarray, prob: np.ndarray, spec: TilingSpec = SPEC) -> MaskStore:
    grid = SceneGrid(mask.shape[0], mask.shape[1], Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    store = create_mask_store(path / "mask.zarr", grid, spec, scene_name="t")
    store.mask[:] = mask
    store.probability[:] = prob
    return store


def _paint(mask: np.ndarray, prob: np.ndarray, pixels: list[tuple[int, int]], score: float) -> None:
    for k, (r, c) in enumerate(pixels):
        mask[r, c] = 1
        prob[r, c] = score + 0.001 * k


# name -> pixels (row, col); chunk borders at rows/cols 32, 64, 96
OBJECTS: dict[str, list[tuple[int, int]]] = {
    "inside": [(5, 5)],
    "vertical_border": [(10, 31), (10, 32), (11, 31), (11, 32)],
    "four_chunk_corner": [(31, 63), (31, 64), (32, 63), (32, 64)],
    "diagonal_across_corner": [(63, 31), (64, 32)],  # 8-connected only
    "anti_diagonal": [(63, 64), (64, 63)],  # anchor in chunk (1, 2), other pixel in (2, 1)
    "u_shape": [(5, 40), (6, 40), (7, 40), (8, 40)]
    + [(8, c) for c in range(20, 40)]
    + [(7, 20), (6, 20)],  # anchor (5, 40) in chunk (0, 1); most pixels in chunk (0, 0)
    "long_line": [(80, c) for c in range(2, 60)],  # longer than the margin: region must grow
    "scene_corner": [(99, 89), (98, 89)],
}


def _truth(pixels: list[tuple[int, int]]) -> tuple[float, float, int, tuple[int, int, int, int]]:
    rr = np.array([p[0] for p in pixels], dtype=float)
    cc = np.array([p[1] for p in pixels], dtype=float)
    return (
        rr.mean(),
        cc.mean(),
        len(pixels),
        (int(rr.min()), int(cc.min()), int(rr.max()), int(cc.max())),
    )


@pytest.fixture
def scene_objects(tmp_path: Path) -> tuple[MaskStore, np.ndarray, np.ndarray]:
    mask = np.zeros((H, W), dtype=np.uint8)
    prob = np.full((H, W), 0.1, dtype=np.float32)
    for k, pixels in enumerate(OBJECTS.values()):
        _paint(mask, prob, pixels, 0.6 + 0.03 * k)
    # nodata next to an object and a nodata block: never objects
    mask[20:25, 70:80] = MASK_NODATA
    prob[20:25, 70:80] = np.nan
    mask[6, 5] = MASK_NODATA
    prob[6, 5] = np.nan
    return _store(tmp_path, mask, prob), mask, prob


def test_each_object_reported_once_with_exact_stats(scene_objects) -> None:
    store, _, prob = scene_objects
    found = vectorize_store(store)
    assert len(found) == len(OBJECTS)
    by_bbox = {(d.row_min, d.col_min, d.row_max, d.col_max): d for d in found}
    for name, pixels in OBJECTS.items():
        row, col, area, bbox = _truth(pixels)
        d = by_bbox[bbox]
        assert (d.row, d.col, d.area_px) == (pytest.approx(row), pytest.approx(col), area), name
        scores = np.array([prob[r, c] for r, c in pixels], dtype=np.float64)
        assert d.score_max == pytest.approx(scores.max()) and d.score_mean == pytest.approx(
            scores.mean()
        )
        anchor = min(pixels)
        assert (d.row_min, d.anchor_col) == anchor


def test_owner_chunk_is_the_anchor_chunk(scene_objects) -> None:
    store, _, _ = scene_objects
    # u_shape (anchor (5, 40)) and four_chunk_corner (anchor (31, 63)) are anchored in (0, 1)
    assert [(d.row_min, d.col_min) for d in vectorize_chunk(store, 0, 1)] == [(5, 20), (31, 63)]
    assert [d.area_px for d in vectorize_chunk(store, 1, 2)] == [2]  # not the corner square
    assert vectorize_chunk(store, 2, 1) == []  # holds a pixel of anti_diagonal, not its anchor
    (line,) = vectorize_chunk(store, 2, 0, margin_px=2)  # margin grows from 2 until the line fits
    assert line.area_px == len(OBJECTS["long_line"])


def test_chunked_equals_whole_array_reference(scene_objects) -> None:
    store, mask, prob = scene_objects
    core_px = store.spec.core_px
    assert vectorize_store(store) == vectorize_ref(mask, prob, core_px)
    assert vectorize_store(store, margin_px=1) == vectorize_ref(mask, prob, core_px)


def test_any_partition_of_chunks_gives_the_same_objects(scene_objects) -> None:
    store, _, _ = scene_objects
    everything = vectorize_store(store)
    chunks = [(i, j) for i in range(4) for j in range(3)]
    rng = random.Random(3)
    for _ in range(3):
        rng.shuffle(chunks)
        parts = [chunks[0:5], chunks[5:7], chunks[7:]]
        union = [d for part in parts for d in vectorize_chunks(store.path, part)]
        assert sorted(union, key=lambda d: (d.row_min, d.anchor_col)) == everything


def test_nodata_never_yields_objects(tmp_path: Path) -> None:
    mask = np.full((40, 40), MASK_NODATA, dtype=np.uint8)
    prob = np.full((40, 40), np.nan, dtype=np.float32)
    store = _store(tmp_path, mask, prob)
    assert vectorize_store(store) == []


def test_chunk_index_checked(scene_objects) -> None:
    store, _, _ = scene_objects
    with pytest.raises(InputError, match=r"chunk \(4, 0\) outside the 4x3 chunk grid"):
        vectorize_chunk(store, 4, 0)


@settings(max_examples=15, deadline=None)
@given(
    mask=arrays(
        np.uint8,
        st.tuples(st.integers(1, 60), st.integers(1, 60)),
        elements=st.sampled_from([0, 0, 0, 1, 1, MASK_NODATA]),
    ),
    margin=st.integers(1, 4),
)
def test_property_chunked_equals_reference(mask: np.ndarray, margin: int) -> None:
    prob = np.where(mask == 1, 0.9, 0.1).astype(np.float32)
    prob += np.arange(mask.size, dtype=np.float32).reshape(mask.shape) * 1e-5
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp), mask, prob, TilingSpec(64, 26))  # core 12
        got = vectorize_store(store, margin_px=margin)
    ref = vectorize_ref(mask, prob, 12)
    assert got == ref
    assert sum(d.area_px for d in got) == int((mask == 1).sum())


def test_detection_is_plain_and_hashable() -> None:
    d = Detection(1.0, 2.0, 1, 0.9, 0.9, 1, 2, 1, 2, 2)
    assert {d: 1}[d] == 1


def test_one_pixel_gap_at_a_chunk_border_is_bridged(tmp_path: Path) -> None:
    """Two tiles can cut one target into two blobs with a one-pixel gap at the chunk border
    between them: that gap is bridged (one object); the same gap inside a chunk is not."""
    spec = TilingSpec(64, 16)  # core 32
    mask = np.zeros((64, 96), np.uint8)
    mask[10:12, 29:32] = 1  # left blob ends at col 31 (chunk 0) ...
    mask[10:12, 33:35] = 1  # ... right blob starts at col 33: gap at col 32, first col of chunk 1
    mask[40:42, 45:47] = 1  # same one-pixel gap (col 47), inside chunk 1: two objects
    mask[40:42, 48:50] = 1
    mask[30, 70:72] = 1  # a horizontal border (row 32) with a gap at row 31 (last row of chunk 0)
    mask[32:34, 70:72] = 1
    prob = np.where(mask == 1, 0.9, 0.0).astype(np.float32)
    store = _store(tmp_path, mask, prob, spec)
    found = vectorize_store(store)
    assert [(d.row_min, d.col_min, d.area_px) for d in found] == [
        (10, 29, 10), (30, 70, 6), (40, 45, 4), (40, 48, 4),
    ]
    bridged = found[0]
    assert bridged.col == pytest.approx(np.mean([29, 30, 31, 33, 34] * 2))  # gap pixel not counted
    assert found == vectorize_ref(mask, prob, spec.core_px)
