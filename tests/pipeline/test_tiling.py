"""pipeline.tiling: cores partition any scene exactly; read windows; ids; spec validation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.tiling import (
    Tile,
    TilingSpec,
    Window,
    chunk_shape,
    iter_tiles,
    parse_tile_id,
    plan_tiles,
    tile_at,
    tile_grid_shape,
)

specs = st.builds(
    lambda k, halo_frac: TilingSpec(64 * k, int(halo_frac * (64 * k - 1) / 2)),
    st.integers(1, 4),
    st.floats(0.0, 0.999),
)


def _check_tile(tile: Tile, spec: TilingSpec, h: int, w: int) -> None:
    core, read = tile.core, tile.read
    assert read.shape == (spec.tile_px, spec.tile_px)
    assert (core.row_off, core.col_off) == (
        tile.row_idx * spec.core_px,
        tile.col_idx * spec.core_px,
    )
    assert 0 < core.height <= spec.core_px and 0 < core.width <= spec.core_px
    assert core.row_stop <= h and core.col_stop <= w
    # core sits at [halo, halo] in the read window
    rs, cs = tile.core_in_tile()
    assert (rs.start, cs.start) == (spec.halo_px, spec.halo_px)
    assert (rs.stop - rs.start, cs.stop - cs.start) == core.shape
    assert tile.chunk_index == (tile.row_idx, tile.col_idx)
    assert parse_tile_id(tile.tile_id) == tile.chunk_index


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), spec=specs)
def test_cores_cover_scene_exactly_once(h: int, w: int, spec: TilingSpec) -> None:
    count = np.zeros((h, w), dtype=np.int32)
    tiles = plan_tiles(h, w, spec)
    assert len(tiles) == np.prod(tile_grid_shape(h, w, spec))
    assert len({t.tile_id for t in tiles}) == len(tiles)
    for tile in tiles:
        _check_tile(tile, spec, h, w)
        count[tile.core.to_slices()] += 1
    assert (count == 1).all()


@pytest.mark.parametrize("shape", [(1, 1), (63, 65), (700, 300), (64, 64), (384, 385)])
@pytest.mark.parametrize("spec", [TilingSpec(64, 0), TilingSpec(128, 32), TilingSpec(512, 64)])
def test_issue_shapes(shape: tuple[int, int], spec: TilingSpec) -> None:
    h, w = shape
    count = np.zeros(shape, dtype=np.int32)
    for tile in iter_tiles(h, w, spec):
        _check_tile(tile, spec, h, w)
        count[tile.core.to_slices()] += 1
    assert (count == 1).all()


def test_one_pixel_scene_has_one_padded_tile() -> None:
    (tile,) = plan_tiles(1, 1, TilingSpec(512, 64))
    assert tile.core == Window(0, 0, 1, 1)
    assert tile.read == Window(-64, -64, 512, 512)
    assert tile.tile_id == "r0_c0"


def test_40000_square_plans_without_materialising() -> None:
    spec = TilingSpec(512, 64)
    t0 = time.perf_counter()
    n_rows, n_cols = tile_grid_shape(40000, 40000, spec)
    assert (n_rows, n_cols) == (105, 105)  # ceil(40000 / 384)
    # coverage checked per axis: cores of a row of tiles / a column of tiles are contiguous
    row_edges = [
        (
            tile_at(40000, 40000, spec, i, 0).core.row_off,
            tile_at(40000, 40000, spec, i, 0).core.row_stop,
        )
        for i in range(n_rows)
    ]
    assert row_edges[0][0] == 0 and row_edges[-1][1] == 40000
    assert all(a[1] == b[0] for a, b in zip(row_edges, row_edges[1:], strict=False))
    last = tile_at(40000, 40000, spec, n_rows - 1, n_cols - 1)
    assert last.core == Window(39936, 39936, 64, 64)
    assert last.read == Window(39872, 39872, 512, 512)
    area = sum(t.core.height * t.core.width for t in iter_tiles(40000, 40000, spec))
    assert area == 40000 * 40000
    assert time.perf_counter() - t0 < 2.0


def test_chunk_shape_is_core() -> None:
    assert chunk_shape(TilingSpec(512, 64)) == (384, 384)
    assert TilingSpec(128, 0).core_px == 128


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_px": 100, "halo_px": 0}, "tile_px must be a positive multiple of 64, got 100"),
        ({"tile_px": 0, "halo_px": 0}, "tile_px must be a positive multiple of 64, got 0"),
        ({"tile_px": 128, "halo_px": -1}, "halo_px must be >= 0, got -1"),
        ({"tile_px": 128, "halo_px": 64}, r"core_px = tile_px - 2\*halo_px must be > 0, got 0"),
        ({"tile_px": 128.0, "halo_px": 0}, "tile_px must be an integer"),
    ],
)
def test_spec_validation_names_field(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        TilingSpec(**kwargs)


def test_bad_scene_shape_and_index() -> None:
    spec = TilingSpec(64, 0)
    with pytest.raises(InputError, match="height_px must be an integer >= 1"):
        plan_tiles(0, 5, spec)
    with pytest.raises(InputError, match="outside the 1x1 tile grid"):
        tile_at(10, 10, spec, 1, 0)
    with pytest.raises(InputError, match="not a tile id"):
        parse_tile_id("tile_3")


def test_window_intersection() -> None:
    assert Window(-5, -5, 20, 20).intersection(10, 12) == Window(0, 0, 10, 12)
    assert Window(8, 3, 20, 2).intersection(10, 12) == Window(8, 3, 2, 2)


def test_value_types_pickle_for_ray(make_scene) -> None:
    """Everything the runner ships to workers is plain and picklable."""
    import pickle

    from pipeline.normalize import NormalizationSpec, NormalizationStats
    from pipeline.scene import open_scene
    from pipeline.vectorize import Detection

    scene = open_scene(make_scene((10, 10)))
    values = [
        TilingSpec(128, 32),
        tile_at(300, 200, TilingSpec(128, 32), 1, 2),
        scene,
        scene.grid,
        NormalizationSpec(),
        NormalizationStats(1.0, 2.0, 0.5),
        Detection(1.0, 2.0, 3, 0.9, 0.8, 1, 2, 1, 3, 2),
    ]
    for value in values:
        assert pickle.loads(pickle.dumps(value)) == value
