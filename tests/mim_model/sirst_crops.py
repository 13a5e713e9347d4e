"""Tiny SIRST-layout folders cut from the real SIRST data, for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mim_model.training.train import TrainConfig

SIRST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sirst"
needs_sirst = pytest.mark.skipif(not (SIRST / "images").is_dir(), reason="SIRST data not found at ../shared/data/sirst")

TRAIN_IDS = ("Misc_181", "Misc_366", "Misc_418", "Misc_189")
VAL_IDS = ("Misc_13", "Misc_325")


def write_sirst_crops(root: Path, splits: dict[str, tuple[str, ...]], hw: tuple[int, int]) -> Path:
    """A SIRST-layout folder of real SIRST images cropped to (H, W) around their first target."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "idx_427").mkdir()
    h, w = hw
    for name, ids in splits.items():
        for image_id in ids:
            img = np.asarray(Image.open(SIRST / "images" / f"{image_id}.png").convert("L"))
            mask = np.asarray(Image.open(SIRST / "masks" / f"{image_id}_pixels0.png").convert("L"))
            rows, cols = np.nonzero(mask > 127)
            r0 = int(np.clip(rows[0] - h // 2, 0, img.shape[0] - h))
            c0 = int(np.clip(cols[0] - w // 2, 0, img.shape[1] - w))
            Image.fromarray(img[r0 : r0 + h, c0 : c0 + w]).save(root / "images" / f"{image_id}.png")
            Image.fromarray(mask[r0 : r0 + h, c0 : c0 + w]).save(root / "masks" / f"{image_id}_pixels0.png")
        (root / "idx_427" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


def tiny_sirst_at(root: Path) -> Path:
    """Four train and two val images of 64 x 64 px (skips the test without the data)."""
    if not (SIRST / "images").is_dir():
        pytest.skip("SIRST data not found at ../shared/data/sirst")
    return write_sirst_crops(root, {"train": TRAIN_IDS, "val": VAL_IDS}, (64, 64))


def tiny_train_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    """A CPU training config for the tiny folders: 64 px crops, batch 2, two epochs."""
    base = dict(
        data_dir=str(data), out_dir=str(out), crop_px=64, batch_size=2, epochs=2, num_workers=0,
        eval_every=2, device="cpu", warmup_epochs=0.5, eval_thresholds=(0.3, 0.5, 0.7),
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]
