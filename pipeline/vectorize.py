"""Objects = 8-connected components of the stitched mask, found chunk by chunk.

Ownership rule
--------------
An object is reported by exactly one chunk: the chunk that contains its **first pixel in
raster order** (smallest row, then smallest column among that row's pixels; the *anchor*).
Every component has exactly one anchor, so an object crossing chunk borders is reported once,
whole, never split and never duplicated.

Per chunk (:func:`vectorize_chunk`) we read the chunk's mask plus a margin (default 16 px) on
every side, label it (``scipy.ndimage.label``, 8-connectivity), and keep the components whose
anchor, as seen in that region, is inside the chunk. If such a component touches the region's
outer edge (where that edge is not the scene edge), it may continue beyond the region: its true
anchor and its statistics could be wrong, so the margin is doubled and the chunk redone. A
component whose visible anchor is outside the chunk is not owned, whatever lies beyond (its
true anchor precedes the visible one, so it is outside the chunk too). Memory is O((chunk +
2 margin)^2); the margin grows only for objects larger than it. A chunk whose own mask has no
target pixel is answered from one chunk read.

Seams
-----
Each chunk is predicted by a different tile, so a target that lies across a chunk border can
come out of the two tiles as two blobs separated by a one-pixel gap right at the border
(seen on real scenes). Such pieces are merged into one object: two components are joined
when one has a pixel just before a gap line next to a chunk border (row or column
``k*core_px - 1`` or ``k*core_px``) and the other a pixel just after it, at most one pixel
apart along the border (:func:`merge_across_seams`). An object's area, scores, centroid
and box count its target pixels only. Away from chunk borders nothing is merged; two real
objects one pixel apart across a border are reported as one.

Coordinates (pixel-centre convention, as :mod:`pipeline.grid`)
--------------------------------------------------------------
``row``/``col`` are the object's centroid in **index space**: the mean of its pixels' row and
column indices, so a one-pixel object at ``mask[10, 20]`` has ``row=10.0, col=20.0``. Its map
position is ``transform @ (col + 0.5, row + 0.5)`` (:func:`pipeline.grid.pixel_to_map`), the
centre of that pixel. ``row_min/col_min/row_max/col_max`` are the inclusive bounding box in
pixel indices. ``score_max``/``score_mean`` are over the object's pixels of ``probability``.
Mask value 255 (nodata) is background: nodata never yields an object.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.errors import InputError
from pipeline.stitch import MASK_TARGET
from pipeline.tiling import Window
from pipeline.write_zarr import MaskStore, open_mask_store

__all__ = [
    "DEFAULT_MARGIN_PX",
    "Detection",
    "objects_in_region",
    "merge_across_seams",
    "vectorize_chunk",
    "vectorize_chunks",
    "vectorize_store",
    "vectorize_ref",
    "sort_detections",
]

log = logging.getLogger(__name__)

DEFAULT_MARGIN_PX = 16
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True, slots=True)
class Detection:
    """One object, in scene pixel coordinates (see the module docstring for conventions).

    Attributes
    ----------
    row, col : float
        Centroid in index space (mean pixel row/column index).
    area_px : int
        Number of pixels.
    score_max, score_mean : float
        Max and mean probability over the object's pixels.
    row_min, col_min, row_max, col_max : int
        Inclusive bounding box.
    anchor_col : int
        Column of the first pixel in raster order (that pixel is ``(row_min, anchor_col)``);
        it decides which chunk owns the object. Not an output column.
    """

    row: float
    col: float
    area_px: int
    score_max: float
    score_mean: float
    row_min: int
    col_min: int
    row_max: int
    col_max: int
    anchor_col: int


def sort_detections(detections: Iterable[Detection]) -> list[Detection]:
    """Detections in raster order of their anchors: the same order whatever the parallelism."""
    return sorted(detections, key=lambda d: (d.row_min, d.anchor_col))


def _stats(
    labels_box: npt.NDArray[np.int32],
    prob_box: npt.NDArray[np.floating],
    label: int,
    row0: int,
    col0: int,
    anchor_col: int,
) -> Detection:
    """Detection of ``label`` whose bounding box (in a region) starts at global ``(row0, col0)``."""
    sel = labels_box == label
    rr, cc = np.nonzero(sel)
    scores = prob_box[sel].astype(np.float64)
    return Detection(
        row=float(rr.mean() + row0),
        col=float(cc.mean() + col0),
        area_px=int(rr.size),
        score_max=float(np.max(scores)),
        score_mean=float(np.mean(scores)),
        row_min=int(row0 + rr.min()),
        col_min=int(col0 + cc.min()),
        row_max=int(row0 + rr.max()),
        col_max=int(col0 + cc.max()),
        anchor_col=int(anchor_col),
    )


def merge_across_seams(
    labels: npt.NDArray[np.int32], n: int, region: Window, core_px: int | None
) -> npt.NDArray[np.int32]:
    """Merge components split by a one-pixel gap at a chunk border (see "Seams" above). Pure.

    Components A and B are merged when, for a gap line ``c`` in ``{border - 1, border}``,
    A has a pixel in line ``c - 1`` and B one in line ``c + 1`` at most one pixel apart
    along the border. Returns labels with merged components sharing one label.
    """
    if not core_px or n < 2:
        return labels
    pairs = []
    for transposed, offset in ((False, region.col_off), (True, region.row_off)):
        lab = labels.T if transposed else labels
        lines = lab.shape[1]
        first = -(-(offset + 1) // core_px) * core_px  # first border strictly inside the region
        for border in range(first, offset + lines, core_px):
            for gap in (border - 1, border):
                g = gap - offset
                if not 1 <= g < lines - 1:
                    continue
                before, after = lab[:, g - 1], lab[:, g + 1]
                for shift in (-1, 0, 1):
                    a = before[max(0, -shift) : len(before) - max(0, shift)]
                    b = after[max(0, shift) : len(after) - max(0, -shift)]
                    hit = (a > 0) & (b > 0) & (a != b)
                    if hit.any():
                        pairs.append(np.stack([a[hit], b[hit]], axis=1))
    if not pairs:
        return labels
    edges = np.concatenate(pairs)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n + 1, n + 1))
    _, component = connected_components(graph, directed=False)
    # component ids -> new labels 1..k, background stays 0
    lut = np.zeros(n + 1, dtype=np.int32)
    _, first_label = np.unique(component[1:], return_inverse=True)
    lut[1:] = first_label + 1
    return lut[labels]


def objects_in_region(
    mask_region: npt.NDArray[np.integer],
    prob_region: npt.NDArray[np.floating] | None,
    region: Window,
    core: Window,
    scene_shape: tuple[int, int],
    core_px: int | None = None,
) -> tuple[list[Detection], bool]:
    """Objects owned by ``core``, labelled within ``region``. Pure.

    Parameters
    ----------
    mask_region : ndarray of uint8, shape region.shape
        Mask values (1 = target; anything else is background).
    prob_region : ndarray of float, shape region.shape, or None
        Probability; None gives NaN scores (only when the caller has none).
    region : Window
        Where ``mask_region`` lies in the scene (inside it); contains ``core``.
    core : Window
        The chunk whose objects are wanted.
    scene_shape : tuple of int
        ``(H, W)``, to tell the scene edge from the region edge.
    core_px : int or None
        Chunk side, to bridge one-pixel gaps across chunk borders (None: no bridging).

    Returns
    -------
    detections : list of Detection
        Objects whose anchor is in ``core``, in scene coordinates.
    grow : bool
        True when some object anchored in ``core`` touches a non-scene edge of ``region``: the
        caller must retry with a larger region (``detections`` is then incomplete).
    """
    labels, n = ndimage.label(mask_region == MASK_TARGET, structure=_EIGHT)
    if n == 0:
        return [], False
    labels = merge_across_seams(labels, n, region, core_px)
    # an object must stay clear of a cut region edge by the reach of the seam merge (2 px):
    # otherwise a piece beyond the edge could belong to it
    reach = 2 if core_px else 0
    cr0, cc0 = core.row_off - region.row_off, core.col_off - region.col_off
    core_labels = np.unique(labels[cr0 : cr0 + core.height, cc0 : cc0 + core.width])
    core_labels = core_labels[core_labels > 0]
    if core_labels.size == 0:
        return [], False
    boxes = ndimage.find_objects(labels)
    h, w = scene_shape
    edge_top = region.row_off > 0
    edge_left = region.col_off > 0
    edge_bottom = region.row_stop < h
    edge_right = region.col_stop < w
    found: list[Detection] = []
    for label in core_labels.tolist():
        rs, cs = boxes[label - 1]
        anchor_r = rs.start
        anchor_c = cs.start + int(np.argmax(labels[anchor_r, cs] == label))
        if not (cr0 <= anchor_r < cr0 + core.height and cc0 <= anchor_c < cc0 + core.width):
            continue  # anchored before the core in raster order: another chunk owns it
        if (
            (edge_top and rs.start <= reach)
            or (edge_left and cs.start <= reach)
            or (edge_bottom and rs.stop >= region.height - reach)
            or (edge_right and cs.stop >= region.width - reach)
        ):
            return [], True
        prob_box = (
            np.full((rs.stop - rs.start, cs.stop - cs.start), np.nan)
            if prob_region is None
            else prob_region[rs, cs]
        )
        found.append(
            _stats(
                labels[rs, cs],
                prob_box,
                label,
                region.row_off + rs.start,
                region.col_off + cs.start,
                region.col_off + anchor_c,
            )
        )
    return found, False


def _as_store(store: MaskStore | str | os.PathLike[str]) -> MaskStore:
    return store if isinstance(store, MaskStore) else open_mask_store(store, mode="r")


def vectorize_chunk(
    store: MaskStore | str | os.PathLike[str],
    row_idx: int,
    col_idx: int,
    *,
    margin_px: int = DEFAULT_MARGIN_PX,
) -> list[Detection]:
    """Objects owned by chunk ``(row_idx, col_idx)`` of a mask store.

    Parameters
    ----------
    store : MaskStore or path-like
        An open store or the path of ``mask.zarr``.
    row_idx, col_idx : int
        Chunk index (== tile index).
    margin_px : int
        Initial margin read around the chunk, >= 1; doubled while an owned object touches
        the region's edge.

    Returns
    -------
    list of Detection
        In raster order of anchors.

    Raises
    ------
    InputError
        Chunk index out of range or ``margin_px < 1``.
    """
    st = _as_store(store)
    if margin_px < 1:
        raise InputError(f"vectorize: margin_px must be >= 1, got {margin_px}")
    n_rows, n_cols = st.chunk_grid_shape
    if not (0 <= row_idx < n_rows and 0 <= col_idx < n_cols):
        raise InputError(
            f"{st.path}: chunk ({row_idx}, {col_idx}) outside the {n_rows}x{n_cols} chunk grid"
        )
    h, w = st.grid.shape
    core_px = st.spec.core_px
    r0, c0 = row_idx * core_px, col_idx * core_px
    core = Window(r0, c0, min(core_px, h - r0), min(core_px, w - c0))
    if not np.any(st.mask[core.to_slices()] == MASK_TARGET):
        return []
    margin = margin_px
    while True:
        region = Window(
            core.row_off - margin,
            core.col_off - margin,
            core.height + 2 * margin,
            core.width + 2 * margin,
        ).intersection(h, w)
        sl = region.to_slices()
        mask_region = np.asarray(st.mask[sl])
        found, grow = objects_in_region(mask_region, None, region, core, (h, w), core_px)
        if not grow:
            break
        margin *= 2
        log.debug(
            "%s: chunk r%d_c%d: object reaches the margin, margin -> %d px",
            st.scene_name,
            row_idx,
            col_idx,
            margin,
        )
    if not found:
        return []
    prob_region = np.asarray(st.probability[sl])
    found, _ = objects_in_region(mask_region, prob_region, region, core, (h, w), core_px)
    if margin > 8 * margin_px:
        log.warning(
            "%s: chunk r%d_c%d: large object, vectorised with a %d px margin",
            st.scene_name,
            row_idx,
            col_idx,
            margin,
        )
    return sort_detections(found)


def vectorize_chunks(
    store: MaskStore | str | os.PathLike[str],
    chunk_indices: Iterable[tuple[int, int]],
    *,
    margin_px: int = DEFAULT_MARGIN_PX,
) -> list[Detection]:
    """Objects owned by a set of chunks (a unit of parallel work for the runner).

    The union over any partition of all chunks is the same set of objects, each once.

    Parameters
    ----------
    store : MaskStore or path-like
    chunk_indices : iterable of (row_idx, col_idx)
    margin_px : int

    Returns
    -------
    list of Detection
        In raster order of anchors.

    Raises
    ------
    InputError
        See :func:`vectorize_chunk`.
    """
    st = _as_store(store)
    out: list[Detection] = []
    for row_idx, col_idx in chunk_indices:
        out.extend(vectorize_chunk(st, row_idx, col_idx, margin_px=margin_px))
    return sort_detections(out)


def vectorize_store(
    store: MaskStore | str | os.PathLike[str], *, margin_px: int = DEFAULT_MARGIN_PX
) -> list[Detection]:
    """All objects of a mask store, chunk by chunk in one process (memory O(chunk))."""
    st = _as_store(store)
    n_rows, n_cols = st.chunk_grid_shape
    indices = ((i, j) for i in range(n_rows) for j in range(n_cols))
    return vectorize_chunks(st, indices, margin_px=margin_px)


def vectorize_ref(
    mask: npt.NDArray[np.integer], probability: npt.NDArray[np.floating], core_px: int | None = None
) -> list[Detection]:
    """Reference: label a whole in-memory mask at once (O(scene) memory; tests, small scenes).

    Must give exactly what :func:`vectorize_store` gives on the same arrays (pass the store's
    ``core_px`` for the same seam bridging).
    """
    h, w = mask.shape
    whole = Window(0, 0, h, w)
    found, _ = objects_in_region(np.asarray(mask), np.asarray(probability), whole, whole, (h, w), core_px)
    return sort_detections(found)
