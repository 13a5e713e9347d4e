"""pipeline.quicklook: decimated, stretched PNG with detections marked in red."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.quicklook import render_quicklook, stretch_to_uint8, write_quicklook
from pipeline.scene import open_scene
from pipeline.vectorize import Detection


def _det(row: float, col: float) -> Detection:
    r, c = int(row), int(col)
    return Detection(row, col, 9, 0.9, 0.8, r - 1, c - 1, r + 1, c + 1, c - 1)


def _is_red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)


def test_quicklook_is_decimated_and_marks_detections(make_scene, tmp_path: Path) -> None:
    path = make_scene((600, 450), targets=[(100, 100), (500, 400)])
    scene = open_scene(path)
    out = write_quicklook(
        scene, [_det(100, 100), _det(500, 400)], tmp_path / "ql" / "quicklook.png", max_side_px=200
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["quicklook.png"]  # no temp file left
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (150, 200)  # (width, height), long side 200
        rgb = np.asarray(im)
    red = _is_red(rgb)
    # marker centres at ((col + 0.5) * sx, (row + 0.5) * sy) with s = 1/3
    for row, col in ((100, 100), (500, 400)):
        cy, cx = int((row + 0.5) / 3), int((col + 0.5) / 3)
        assert red[cy - 1 : cy + 2, cx - 1 : cx + 2].any()
    assert red.sum() < 0.05 * red.size  # marks, not a red image


def test_stretch_and_nodata() -> None:
    pixels = np.array([[0.0, 50.0], [100.0, np.nan]])
    valid = np.array([[True, True], [True, False]])
    grey = stretch_to_uint8(pixels, valid, 0.0, 100.0)
    assert grey.tolist() == [[0, 127], [255, 0]]
    image = np.asarray(render_quicklook(pixels, valid, (2, 2), []))
    assert tuple(image[1, 1]) == (20, 20, 60)  # nodata drawn dark blue


def test_quicklook_of_real_scene(s2_b12: Path, tmp_path: Path) -> None:
    scene = open_scene(s2_b12)
    out = write_quicklook(scene, [], tmp_path / "quicklook.png")
    with Image.open(out) as im:
        assert im.size == (967, 973)  # smaller than 1024: not enlarged
        assert np.asarray(im).std() > 10  # stretched, not flat
