"""Split a scene into square tiles with a halo; each tile's core is one output chunk. Pure.

Glossary (see also :mod:`pipeline`): a **tile** is the ``tile_px x tile_px`` square read from
the scene and fed to the model; its **core** is the central ``core_px x core_px`` part
(``core_px = tile_px - 2 * halo_px``) that is kept; the **halo** is the ``halo_px`` margin on
every side that gives the model context and is thrown away.

Layout
------
- Cores form a regular grid anchored at pixel ``(0, 0)``: tile ``(i, j)`` has core rows
  ``i*core_px .. min((i+1)*core_px, H) - 1`` and the same for columns. Edge cores are
  clipped to the scene, so cores partition the scene exactly (no gap, no overlap) for any
  ``H, W >= 1``. A scene smaller than one core has one tile.
- The Zarr arrays are chunked ``(core_px, core_px)``, so tile ``(i, j)``'s core **is** chunk
  ``(i, j)``: each chunk has exactly one writer.
- The read window is the core's *unclipped* square expanded by ``halo_px`` on every side, so
  it is always ``tile_px x tile_px`` and the core always sits at ``[halo_px:halo_px+h,
  halo_px:halo_px+w]`` inside the tile. It may hang over the scene edge (negative offsets or
  past the end): the reader pads those pixels (see :mod:`pipeline.scene`).
- Tile ids are ``"r{i}_c{j}"``: deterministic, so they can key a manifest for resume.

Nothing here allocates per-pixel memory; :func:`iter_tiles` is lazy and :func:`tile_at` is
O(1), so a 40000 x 40000 scene plans in milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.errors import InputError

__all__ = [
    "DEFAULT_HALO_PX",
    "DEFAULT_TILE_PX",
    "TILE_MULTIPLE_PX",
    "TilingSpec",
    "Window",
    "Tile",
    "tile_grid_shape",
    "tile_at",
    "iter_tiles",
    "plan_tiles",
    "parse_tile_id",
    "chunk_shape",
]

TILE_MULTIPLE_PX = 64
"""MiM-ISTD takes square inputs whose side is a multiple of 64."""

_TILE_ID = re.compile(r"^r(\d+)_c(\d+)$")


#: Default tile side and halo of a scan, pixels (see :class:`TilingSpec`).
DEFAULT_TILE_PX = 512
DEFAULT_HALO_PX = 64


@dataclass(frozen=True, slots=True)
class TilingSpec:
    """Tile side and halo, in pixels.

    Parameters
    ----------
    tile_px : int
        Side of the square tile fed to the model; a positive multiple of 64. The packaged
        network judges a spot by its surroundings, and wide tiles of textured land hide
        some targets: tiles of 192 (halo 32) found 3 more of 60 on a validation scene but
        none more on the test scene, and run at a quarter of the GPU throughput (many
        small chunks); the default stays 512 (``docs/benchmarks.md``). To narrow the
        network's view without small chunks, see ``InferenceSpec.window_px``.
    halo_px : int
        Context margin on each side, >= 0; ``core_px = tile_px - 2*halo_px`` must be > 0.

    Raises
    ------
    InputError
        A field is not an int, ``tile_px`` is not a positive multiple of 64, ``halo_px`` is
        negative, or the core would be empty. The message names the field, the expected and
        the actual value.
    """

    tile_px: int = DEFAULT_TILE_PX
    halo_px: int = DEFAULT_HALO_PX

    def __post_init__(self) -> None:
        for name in ("tile_px", "halo_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"tiling: {name} must be an integer, got {value!r}")
        if self.tile_px <= 0 or self.tile_px % TILE_MULTIPLE_PX:
            raise InputError(
                f"tiling: tile_px must be a positive multiple of {TILE_MULTIPLE_PX},"
                f" got {self.tile_px}"
            )
        if self.halo_px < 0:
            raise InputError(f"tiling: halo_px must be >= 0, got {self.halo_px}")
        if self.core_px <= 0:
            raise InputError(
                f"tiling: core_px = tile_px - 2*halo_px must be > 0, got {self.core_px}"
                f" (tile_px={self.tile_px}, halo_px={self.halo_px});"
                f" use halo_px < {self.tile_px // 2}"
            )

    @property
    def core_px(self) -> int:
        """Side of the kept core, ``tile_px - 2*halo_px``; also the Zarr chunk side."""
        return self.tile_px - 2 * self.halo_px


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels in (row, col) order; offsets may be negative (beyond the scene).

    Convert to rasterio's ``Window(col_off=..., row_off=..., width=..., height=...)`` only at
    the I/O boundary, with keywords.
    """

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_stop(self) -> int:
        """One past the last row."""
        return self.row_off + self.height

    @property
    def col_stop(self) -> int:
        """One past the last column."""
        return self.col_off + self.width

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    def to_slices(self) -> tuple[slice, slice]:
        """``(row slice, col slice)`` for numpy / zarr indexing (only for non-negative offsets)."""
        return (slice(self.row_off, self.row_stop), slice(self.col_off, self.col_stop))

    def intersection(self, height_px: int, width_px: int) -> Window:
        """This window clipped to a ``height_px x width_px`` scene (may be empty: 0 rows/cols)."""
        r0 = min(max(self.row_off, 0), height_px)
        c0 = min(max(self.col_off, 0), width_px)
        r1 = max(min(self.row_stop, height_px), r0)
        c1 = max(min(self.col_stop, width_px), c0)
        return Window(r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a plan: its index, core window and read window (scene pixel coordinates).

    Attributes
    ----------
    row_idx, col_idx : int
        Tile (and chunk) index.
    core : Window
        The kept pixels, clipped to the scene; equal to Zarr chunk ``(row_idx, col_idx)``.
    read : Window
        ``tile_px x tile_px`` window to read, centred on the unclipped core; may extend past
        the scene.
    """

    row_idx: int
    col_idx: int
    core: Window
    read: Window

    @property
    def tile_id(self) -> str:
        """Deterministic id ``"r{row_idx}_c{col_idx}"``."""
        return f"r{self.row_idx}_c{self.col_idx}"

    @property
    def chunk_index(self) -> tuple[int, int]:
        """The Zarr chunk written by this tile: ``(row_idx, col_idx)``."""
        return (self.row_idx, self.col_idx)

    def core_in_tile(self) -> tuple[slice, slice]:
        """Slices that cut the core out of a ``(tile_px, tile_px)`` array read at ``read``."""
        r0 = self.core.row_off - self.read.row_off
        c0 = self.core.col_off - self.read.col_off
        return (slice(r0, r0 + self.core.height), slice(c0, c0 + self.core.width))


def _check_shape(height_px: int, width_px: int) -> None:
    for name, value in (("height_px", height_px), ("width_px", width_px)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"tiling: scene {name} must be an integer >= 1, got {value!r}")


def tile_grid_shape(height_px: int, width_px: int, spec: TilingSpec) -> tuple[int, int]:
    """Number of tile rows and columns: ``(ceil(H / core_px), ceil(W / core_px))``.

    Raises
    ------
    InputError
        ``height_px`` or ``width_px`` is not an integer >= 1.
    """
    _check_shape(height_px, width_px)
    core = spec.core_px
    return (-(-height_px // core), -(-width_px // core))


def tile_at(height_px: int, width_px: int, spec: TilingSpec, row_idx: int, col_idx: int) -> Tile:
    """The tile ``(row_idx, col_idx)`` of the plan, in O(1).

    Raises
    ------
    InputError
        The index is outside :func:`tile_grid_shape`, or the scene shape is invalid.
    """
    n_rows, n_cols = tile_grid_shape(height_px, width_px, spec)
    if not (0 <= row_idx < n_rows and 0 <= col_idx < n_cols):
        raise InputError(
            f"tiling: tile index ({row_idx}, {col_idx}) outside the {n_rows}x{n_cols} tile grid"
        )
    core_px, halo_px = spec.core_px, spec.halo_px
    r0, c0 = row_idx * core_px, col_idx * core_px
    core = Window(r0, c0, min(core_px, height_px - r0), min(core_px, width_px - c0))
    read = Window(r0 - halo_px, c0 - halo_px, spec.tile_px, spec.tile_px)
    return Tile(row_idx, col_idx, core, read)


def iter_tiles(height_px: int, width_px: int, spec: TilingSpec) -> Iterator[Tile]:
    """Yield every tile in row-major order, lazily (see :func:`plan_tiles`)."""
    n_rows, n_cols = tile_grid_shape(height_px, width_px, spec)
    for i in range(n_rows):
        for j in range(n_cols):
            yield tile_at(height_px, width_px, spec, i, j)


def plan_tiles(height_px: int, width_px: int, spec: TilingSpec) -> list[Tile]:
    """All tiles of a ``height_px x width_px`` scene, row-major; cores partition the scene.

    Parameters
    ----------
    height_px, width_px : int
        Scene shape in pixels, >= 1.
    spec : TilingSpec
        Tile and halo sizes.

    Returns
    -------
    list of Tile
        ``n_rows * n_cols`` tiles (see :func:`tile_grid_shape`), ids ``"r{i}_c{j}"``.

    Raises
    ------
    InputError
        Invalid scene shape.
    """
    return list(iter_tiles(height_px, width_px, spec))


def parse_tile_id(tile_id: str) -> tuple[int, int]:
    """``"r3_c7" -> (3, 7)``.

    Raises
    ------
    InputError
        The string is not a tile id.
    """
    m = _TILE_ID.match(tile_id)
    if m is None:
        raise InputError(f"tiling: not a tile id (expected 'r<row>_c<col>'), got {tile_id!r}")
    return (int(m.group(1)), int(m.group(2)))


def chunk_shape(spec: TilingSpec) -> tuple[int, int]:
    """Zarr chunk shape of the output arrays: ``(core_px, core_px)``."""
    return (spec.core_px, spec.core_px)
