"""Training pieces: data errors, augmentation, loss, tiling, a tiny CPU training run with resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mim_model.training.data import (
    Augment,
    DatasetError,
    EpochSampler,
    SirstSplit,
    augment_sample,
    load_grey01,
    mosaic_sample,
    read_split,
)
from mim_model.training.inference import axis_tiles, padded_side, predict_probs
from mim_model.training.loss import make_loss, per_image_soft_iou_loss, sls_loss, soft_iou_loss, soft_tversky_loss
from mim_model.training.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from mim_model.training.train import TrainConfig, TrainError, _lr_lambda, export, train
from tests.mim_model.sirst_crops import needs_sirst, tiny_train_config

# --------------------------------------------------------------------------- data errors


def test_missing_and_empty_split_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="data directory"):
        read_split(tmp_path / "nowhere", "train")
    (tmp_path / "idx_427").mkdir()
    with pytest.raises(DatasetError, match=r"train\.txt.*got none there"):
        read_split(tmp_path, "train")
    (tmp_path / "idx_427" / "test.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"test\.txt: expected at least one image id, got an empty file"):
        read_split(tmp_path, "test")


@needs_sirst
def test_mask_of_another_size_names_file_and_sizes(tiny_sirst: Path) -> None:
    Image.fromarray(np.zeros((50, 70), np.uint8)).save(tiny_sirst / "masks" / "Misc_13_pixels0.png")
    with pytest.raises(DatasetError) as info:
        SirstSplit.load(tiny_sirst, "val")
    msg = str(info.value)
    assert "Misc_13_pixels0.png" in msg and "(64, 64)" in msg and "(50, 70)" in msg
    assert "\n" not in msg


@needs_sirst
def test_unreadable_and_missing_images(tiny_sirst: Path) -> None:
    (tiny_sirst / "images" / "Misc_325.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"Misc_325\.png: expected an image PIL can read"):
        SirstSplit.load(tiny_sirst, "val")
    (tiny_sirst / "images" / "Misc_325.png").unlink()
    with pytest.raises(DatasetError, match=r"Misc_325\.png: expected an image file, got none there"):
        SirstSplit.load(tiny_sirst, "val")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tiny_sirst / "images" / "Misc_325.png")
    (tiny_sirst / "masks" / "Misc_325_pixels0.png").unlink()
    with pytest.raises(DatasetError, match=r"^mask .*Misc_325_pixels0\.png: expected an image file, got none there$"):
        SirstSplit.load(tiny_sirst, "val")


def test_load_grey01_stretches_16_bit(tmp_path: Path) -> None:
    arr = np.array([[1000, 3000], [2000, 5000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = load_grey01(tmp_path / "x.png")
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


# --------------------------------------------------------------------------- augmentation and loss


def test_augment_shapes_padding_and_target_crops() -> None:
    rng = np.random.default_rng(0)
    img = np.full((40, 300), 200, np.uint8)
    mask = np.zeros((40, 300), bool)
    mask[20:22, 250:252] = True
    aug = Augment(scale_range=(1.0, 1.0), p_target_crop=1.0, flips=False, brightness=0, contrast=0, p_blur=0)
    for _ in range(20):
        x, y = augment_sample(img, mask, 64, aug, rng)
        assert x.shape == y.shape == (64, 64) and x.dtype == y.dtype == np.float32
        assert y.sum() == 4  # the target is always inside the crop
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert (x == 0).sum() == 64 * (64 - 40)  # rows past the 40-px image are zero padding
    x, y = augment_sample(img, mask, 64, Augment(), rng)
    assert x.shape == (64, 64) and 0 <= x.min() and x.max() <= 1


def test_mosaic_cells_are_whole_crops_of_random_images() -> None:
    # Five 40x40 images of distinct grey levels (k * 40 + 20), each with one 2x2 target at a
    # known place; no jitter, no rescale, no flips: each 32-px cell of a 64-px mosaic is one
    # image (level known), its target inside, and the first cell is the sampled index's.
    images = [np.full((40, 40), k * 40 + 20, np.uint8) for k in range(5)]
    masks = []
    for k in range(5):
        m = np.zeros((40, 40), bool)
        m[10 + k : 12 + k, 20:22] = True
        masks.append(m)
    aug = Augment(scale_range=(1.0, 1.0), p_target_crop=1.0, flips=False, brightness=0, contrast=0, p_blur=0,
                  mosaic=2)
    rng = np.random.default_rng(0)
    sources = set()
    for trial in range(20):
        index = trial % 5
        x, y = mosaic_sample(images, masks, index, 64, aug, rng)
        assert x.shape == y.shape == (64, 64) and x.dtype == y.dtype == np.float32
        for r in range(2):
            for c in range(2):
                cell = np.s_[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32]
                cell_x, cell_y = x[cell], y[cell]
                levels = np.unique(np.round(cell_x * 255))
                assert len(levels) == 1  # one image fills the cell (a 40-px image covers 32 px)
                source = (int(levels[0]) - 20) // 40
                sources.add(source)
                if (r, c) == (0, 0):
                    assert source == index
                assert cell_y.sum() == 4  # that image's target, whole, inside its cell
    assert sources == set(range(5))  # the other cells draw from the whole split
    one = Augment(scale_range=(1.0, 1.0), p_target_crop=1.0, flips=False, brightness=0, contrast=0, p_blur=0)
    a = mosaic_sample(images, masks, 3, 64, one, np.random.default_rng(7))
    b = augment_sample(images[3], masks[3], 64, one, np.random.default_rng(7))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))  # mosaic 1 is the plain crop
    with pytest.raises(ValueError, match="mosaic: expected a whole number >= 1, got 0"):
        Augment(mosaic=0)
    with pytest.raises(TrainError, match="crop_px: expected a multiple of the augmentation's mosaic 3, got 128"):
        TrainConfig(data_dir="d", out_dir="o", crop_px=128, augment=Augment(mosaic=3))


def test_epoch_sampler_is_deterministic_per_epoch() -> None:
    s = EpochSampler(10, seed=3, repeats=2)
    s.set_epoch(4)
    a = list(s)
    assert len(a) == len(s) == 20 and sorted(i for i, _ in a) == sorted(list(range(10)) * 2)
    assert list(s) == a
    s.set_epoch(5)
    assert list(s) != a


def test_soft_iou_loss_values() -> None:
    y = torch.zeros(2, 1, 8, 8)
    y[0, 0, 2:4, 2:4] = 1
    assert soft_iou_loss(torch.where(y > 0, 30.0, -30.0), y).item() == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 everywhere: inter 2, sum p 64, sum y 4 -> 1 - 3/(64 + 4 - 2 + 1)
    assert soft_iou_loss(torch.zeros_like(y), y).item() == pytest.approx(1 - 3 / 67, rel=1e-6)
    assert make_loss("softiou+bce")(torch.zeros_like(y), y).item() == pytest.approx(1 - 3 / 67 + 0.5 * np.log(2), rel=1e-5)


def test_tversky_loss_values_and_its_weight_on_missed_pixels() -> None:
    y = torch.zeros(2, 1, 8, 8)
    y[0, 0, 2:4, 2:4] = 1
    # p = 0.5 everywhere: TP 2, FP 62, FN 2 -> 1 - 3 / (2 + 0.3 * 62 + 0.7 * 2 + 1)
    assert make_loss("tversky")(torch.zeros_like(y), y).item() == pytest.approx(1 - 3 / 23, rel=1e-6)
    # both weights 1 is SoftIoU
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert soft_tversky_loss(logits, y, 1.0, 1.0).item() == pytest.approx(soft_iou_loss(logits, y).item(), rel=1e-6)
    # a target of 8 px: two of its pixels missed (A) against two false pixels added (B)
    y = torch.zeros(1, 1, 8, 8)
    y[0, 0, 2:4, 2:6] = 1
    missed, extra = y.clone(), y.clone()
    missed[0, 0, 3, 4:6] = 0
    extra[0, 0, 4, 2:4] = 1
    def saturated(mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask > 0, 30.0, -30.0)
    tversky = make_loss("tversky")
    assert tversky(saturated(missed), y).item() == pytest.approx(1 - 7 / 8.4, rel=1e-5)
    assert tversky(saturated(extra), y).item() == pytest.approx(1 - 9 / 9.6, rel=1e-5)
    # SoftIoU charges the miss 1.2x the false pixels (2/9 against 2/11); Tversky 2.7x
    iou_ratio = soft_iou_loss(saturated(missed), y) / soft_iou_loss(saturated(extra), y)
    tversky_ratio = tversky(saturated(missed), y) / tversky(saturated(extra), y)
    assert tversky_ratio.item() > 2 * iou_ratio.item()
    # tversky-fa (smooth 1): 1 - 7 / (6 + 0.6 * 2 + 1) for the miss, 1 - 9 / (8 + 1.4 * 2 + 1) for the false pixels
    tversky_fa = make_loss("tversky-fa")
    assert tversky_fa(saturated(missed), y).item() == pytest.approx(1 - 7 / 8.2, rel=1e-5)
    assert tversky_fa(saturated(extra), y).item() == pytest.approx(1 - 9 / 11.8, rel=1e-5)
    assert (tversky_fa(saturated(extra), y) / tversky_fa(saturated(missed), y)).item() > 1.5


def test_to_model_input_normalisation() -> None:
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    out = to_model_input(x)
    assert out.shape == (1, 3, 1, 2)
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c])
        assert out[0, c, 0, 1].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


# --------------------------------------------------------------------------- padding and tiling


@pytest.mark.parametrize(("size", "tile", "halo"), [(100, 64, 8), (1000, 512, 64), (513, 512, 64), (64, 64, 8), (30, 64, 8)])
def test_axis_tiles_partition(size: int, tile: int, halo: int) -> None:
    tiles = axis_tiles(size, tile, halo)
    assert tiles[0][1] == 0 and tiles[-1][2] == size
    for (s, k0, k1), nxt in zip(tiles, tiles[1:] + [None], strict=True):
        assert s <= k0 < k1 <= s + tile
        if nxt is not None:
            assert k1 == nxt[1]
            assert k1 - s >= min(halo, size) and s + tile - k1 >= halo  # cut far from tile edges


def test_padded_side() -> None:
    assert padded_side(96, 135) == 192 and padded_side(64, 64) == 64 and padded_side(1, 1) == 64


def test_tiled_prediction_equals_whole_for_a_pointwise_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 1)
    img = np.random.default_rng(0).random((150, 100), dtype=np.float32)
    whole, = predict_probs(model, [img], device="cpu", max_side_px=1024)
    tiled, = predict_probs(model, [img], device="cpu", max_side_px=64, tile_px=64, halo_px=8)
    assert whole.shape == tiled.shape == (150, 100)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
    # at input scale 2 the network sees a 300 x 200 image; probabilities come back at 150 x 100
    scaled, = predict_probs(model, [img], device="cpu", scale=2.0)
    assert scaled.shape == (150, 100) and np.abs(scaled - whole).mean() < 0.05


# --------------------------------------------------------------------------- training run


@needs_sirst
def test_train_resume_matches_uninterrupted_run(tiny_sirst: Path, tmp_path: Path) -> None:
    straight = train(tiny_train_config(tiny_sirst, tmp_path / "a"))
    assert straight["finished"] and straight["epochs_done"] == 2
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all(np.isfinite(r["loss"]) for r in lines)
    assert lines[0]["val"] is None and set(lines[1]["val"]) >= {"iou", "niou", "pd", "fa", "threshold"}
    assert straight["best"]["threshold"] in (0.3, 0.5, 0.7)

    first = train(tiny_train_config(tiny_sirst, tmp_path / "b"), max_epochs_this_run=1)
    assert not first["finished"] and first["epochs_done"] == 1
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 2
    assert saved["optimizer"]["state"][0]["step"].item() == 2  # Adam moments were saved
    second = train(tiny_train_config(tiny_sirst, tmp_path / "b"))
    assert second["finished"] and second["epochs_done"] == 2
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert resumed["global_step"] == 4 and resumed["optimizer"]["state"][0]["step"].item() == 4
    reference = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    for name, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # a finished run resumes to nothing and says so
    again = train(tiny_train_config(tiny_sirst, tmp_path / "b"))
    assert again["finished"] and again["epochs_done"] == 2

    # export: float16 safetensors with the val threshold, and a model card
    from mim_model.weights import load_model, read_metadata

    out = export(tmp_path / "a" / "best.pt", tmp_path / "w" / "m.safetensors")
    meta = read_metadata(out["weights"])
    assert float(meta["threshold"]) == straight["best"]["threshold"]
    assert meta["layout"] == "spatial" and "ImageNet" in meta["normalization"]
    assert float(meta["input_scale"]) == 2.0 and meta["epochs_trained"] == "2"
    assert "val" in meta["training_data"] and json.loads(meta["train_config"])["crop_px"] == 64
    assert (tmp_path / "w" / "m.md").read_text().startswith("# Model card")
    model = load_model(out["weights"])
    ref = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["model"]
    for name, value in model.state_dict().items():
        expected = ref[name].half().float() if ref[name].is_floating_point() else ref[name]
        torch.testing.assert_close(value, expected, msg=name)


@needs_sirst
def test_resume_with_more_epochs_follows_the_new_schedule_and_says_so(
    tiny_sirst: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(tiny_train_config(tiny_sirst, tmp_path), max_epochs_this_run=1)  # 1 of 2 epochs, 2 steps
    with caplog.at_level(logging.WARNING, logger="mim_model.training.train"):
        longer = train(tiny_train_config(tiny_sirst, tmp_path, epochs=4))
    assert longer["finished"] and longer["epochs_done"] == 4
    notes = [r.getMessage() for r in caplog.records if "instead of 2" in r.getMessage()]
    assert len(notes) == 1 and "spans 4 epochs" in notes[0] and "at step 2" in notes[0]
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    cfg = tiny_train_config(tiny_sirst, tmp_path, epochs=4)
    # the last step's lr lies on the 4-epoch curve (8 steps), not on the 2-epoch one
    expected = cfg.lr * _lr_lambda(cfg, 2)(saved["global_step"])
    assert saved["global_step"] == 8
    assert saved["scheduler"]["_last_lr"][0] == pytest.approx(expected)


@needs_sirst
def test_acm_recipe_adagrad_at_a_constant_rate(tiny_sirst: Path, tmp_path: Path) -> None:
    """The recipe MiM's author points to (ACM: Adagrad, lr 0.05, constant, weight decay 1e-4)."""
    out = train(tiny_train_config(tiny_sirst, tmp_path, optimizer="adagrad", schedule="constant", lr=0.05, epochs=1,
                        eval_every=1))
    assert out["finished"]
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["scheduler"]["_last_lr"] == [0.05, 0.05]
    state = saved["optimizer"]["state"][0]
    assert "sum" in state and state["sum"].abs().sum() > 0  # Adagrad's accumulated squared gradients
    groups = saved["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]  # no decay on norms, biases, A_logs, Ds


@needs_sirst
def test_resume_refuses_another_layout(tiny_sirst: Path, tmp_path: Path) -> None:
    train(tiny_train_config(tiny_sirst, tmp_path / "r", epochs=1, eval_every=1, eval_thresholds=(0.5,)))
    with pytest.raises(TrainError, match="layout"):
        train(tiny_train_config(tiny_sirst, tmp_path / "r", epochs=1, layout="official"))


@needs_sirst
def test_a_val_split_that_shares_training_images_is_refused(tiny_sirst: Path, tmp_path: Path) -> None:
    val_ids = (tiny_sirst / "idx_427" / "val.txt").read_text().split()
    train_ids = (tiny_sirst / "idx_427" / "train.txt").read_text().split()
    (tiny_sirst / "idx_427" / "trainval.txt").write_text("\n".join(train_ids + val_ids) + "\n")
    with pytest.raises(TrainError, match=rf"val_split: .*got 'val', which shares 2 images with 'trainval' \(e.g. {min(val_ids)}\)"):
        train(tiny_train_config(tiny_sirst, tmp_path / "r", train_split="trainval"))
    assert not (tmp_path / "r" / "last.pt").exists()


@needs_sirst
def test_a_refit_without_val_keeps_the_last_epoch_and_the_fixed_threshold(
    tiny_sirst: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train + val with nothing to choose: no evaluation, best.pt only once the schedule is done."""
    val_ids = (tiny_sirst / "idx_427" / "val.txt").read_text().split()
    train_ids = (tiny_sirst / "idx_427" / "train.txt").read_text().split()
    (tiny_sirst / "idx_427" / "trainval.txt").write_text("\n".join(train_ids + val_ids) + "\n")
    refit = tiny_train_config(tiny_sirst, tmp_path / "r", train_split="trainval", val_split=None, threshold_without_val=0.35,
                    epochs=2, eval_every=1, ema_decay=0.9)
    half = train(refit, max_epochs_this_run=1)
    assert half["epochs_done"] == 1 and half["best"] is None
    assert not (tmp_path / "r" / "best.pt").exists()  # an unfinished refit has no result yet
    with pytest.raises(TrainError, match="best.pt"):
        export(tmp_path / "r" / "best.pt", tmp_path / "w" / "m.safetensors")
    done = train(refit)
    assert done["finished"] and done["best"] == {"epoch": 2, "threshold": 0.35, "val": None}
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val"] for r in records] == [None, None]  # eval_every=1, yet nothing was evaluated
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert best["epoch"] == 2 and best["val"] is None
    for name, value in last["ema_model"].items():  # the weight average of the last epoch
        torch.testing.assert_close(best["model"][name], value, msg=name)
    # 6 training images: 3 steps of 2 crops an epoch (train alone has 4: 2 steps)
    assert last["global_step"] == 6

    from mim_model.weights import read_metadata

    monkeypatch.setenv("IRSCAN_GIT_COMMIT", "0123abc")  # a machine whose copy of .git is stale says which
    out = export(tmp_path / "r" / "best.pt", tmp_path / "w" / "m.safetensors")
    meta = read_metadata(out["weights"])
    assert meta["git_commit"] == "0123abc"
    assert meta["threshold"] == "0.3500" and json.loads(meta["val_metrics"]) is None
    assert "trainval" in meta["training_data"] and "no val split" in meta["training_data"]
    card = Path(out["card"]).read_text()
    assert "fixed before training; no val split" in card and "(selection)" not in card
    assert "the last epoch (2) of a fixed schedule" in card
    assert "No split was evaluated at export" in card and "| split |" not in card


def test_a_refit_refuses_land_val_crops() -> None:
    with pytest.raises(TrainError, match="land_val_crops: expected 0 without a val split"):
        TrainConfig(data_dir="d", out_dir="o", val_split=None, land_val_crops=8)
    with pytest.raises(TrainError, match="threshold_without_val: expected a probability in \\(0, 1\\), got 1.5"):
        TrainConfig(data_dir="d", out_dir="o", val_split=None, threshold_without_val=1.5)


def test_config_validation() -> None:
    with pytest.raises(TrainError, match="crop_px: expected a positive multiple of 64, got 100"):
        TrainConfig(data_dir="d", out_dir="o", crop_px=100)
    with pytest.raises(TrainError, match=r"drop_path_rate: expected a rate in \[0, 1\), got 1.5"):
        TrainConfig(data_dir="d", out_dir="o", drop_path_rate=1.5)
    cfg = TrainConfig(data_dir="d", out_dir="o")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@needs_sirst
def test_fine_tuning_starts_from_the_given_weights(tiny_sirst: Path, tmp_path: Path) -> None:
    from mim_model.weights import DEFAULT_WEIGHTS_PATH, load_model

    start = load_model(DEFAULT_WEIGHTS_PATH).state_dict()  # the network (the file's refiner does not carry over)
    # lr so small that one epoch cannot move a weight measurably: best.pt is the start
    cfg = tiny_train_config(tiny_sirst, tmp_path / "ft", epochs=1, eval_every=1, lr=1e-12, warmup_epochs=0.0,
                  init_weights=str(DEFAULT_WEIGHTS_PATH))
    train(cfg)
    tuned = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)["model"]
    learned = [k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(learned) > 100  # batch-norm statistics move with the data, not the lr
    for name in learned:
        torch.testing.assert_close(tuned[name], start[name], rtol=0, atol=1e-6, msg=name)
    card = export(tmp_path / "ft" / "best.pt", tmp_path / "w" / "ft.safetensors")["card"]
    assert "Fine-tuned from `mim_sirst.safetensors`" in Path(card).read_text()


def test_fine_tuning_refuses_weights_of_another_input_scale(tiny_sirst: Path, tmp_path: Path) -> None:
    from mim_model.weights import DEFAULT_WEIGHTS_PATH

    cfg = tiny_train_config(tiny_sirst, tmp_path / "bad", epochs=1, input_scale=1.0, init_weights=str(DEFAULT_WEIGHTS_PATH))
    with pytest.raises(TrainError, match=r"init_weights: .*mim_sirst.safetensors has input_scale '2.0', expected 1.0"):
        train(cfg)
    # on request, the same weights start a run at the other scale
    from mim_model.weights import load_model

    start = load_model(DEFAULT_WEIGHTS_PATH).state_dict()
    moved = tiny_train_config(tiny_sirst, tmp_path / "moved", epochs=1, eval_every=1, input_scale=1.0, lr=1e-12,
                    warmup_epochs=0.0, init_weights=str(DEFAULT_WEIGHTS_PATH), init_any_scale=True)
    train(moved)
    tuned = torch.load(tmp_path / "moved" / "best.pt", weights_only=True)["model"]
    name = next(k for k in start if k.endswith("weight") and start[k].ndim == 4)
    torch.testing.assert_close(tuned[name], start[name], rtol=0, atol=1e-6)
    card = export(tmp_path / "moved" / "best.pt", tmp_path / "w" / "moved.safetensors")["card"]
    assert "Fine-tuned from `mim_sirst.safetensors` (a fresh optimizer and schedule, any input scale)." in Path(card).read_text()


def test_weight_average_moves_by_one_minus_decay_and_copies_buffers() -> None:
    from mim_model.training.train import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.75)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
        model[1].running_mean.fill_(2.5)
    average.update(model, 0)
    for mine, before in zip(average.model.parameters(), start, strict=True):
        torch.testing.assert_close(mine, before + 1.0)  # 0.75 * w + 0.25 * (w + 4)
        assert not mine.requires_grad
    torch.testing.assert_close(average.model[1].running_mean, torch.full((2,), 2.5))
    assert not average.model.training
    with pytest.raises(TrainError, match=r"ema_decay: expected a decay in \[0, 1\), got 1.0"):
        TrainConfig(data_dir="d", out_dir="o", ema_decay=1.0)


def test_weight_average_warmup_forgets_the_initial_weights() -> None:
    from mim_model.training.train import WeightAverage

    model = torch.nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.999, warmup=True)
    assert average.decay_at(0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert average.decay_at(90) == pytest.approx(0.91)
    assert average.decay_at(20_000) == 0.999  # capped at the configured decay
    assert WeightAverage(model, decay=0.999).decay_at(0) == 0.999  # without warm-up
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(10.0)
    average.update(model, step=0)
    for mine, before in zip(average.model.parameters(), start, strict=True):
        torch.testing.assert_close(mine, before + 9.0)  # 0.1 * w + 0.9 * (w + 10)
    assert TrainConfig(data_dir="d", out_dir="o").ema_warmup


@needs_sirst
def test_weight_average_is_what_is_chosen_and_survives_resume(tiny_sirst: Path, tmp_path: Path) -> None:
    straight = train(tiny_train_config(tiny_sirst, tmp_path / "a", ema_decay=0.5))
    assert straight["finished"]
    last = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    assert best["epoch"] == 2  # the only evaluation
    moved = 0
    for name, value in last["ema_model"].items():
        torch.testing.assert_close(best["model"][name], value, msg=name)  # best.pt holds the average
        moved += int(value.is_floating_point() and not torch.equal(value, last["model"][name]))
    assert moved > 50  # the average is not the raw weights
    train(tiny_train_config(tiny_sirst, tmp_path / "b", ema_decay=0.5), max_epochs_this_run=1)
    train(tiny_train_config(tiny_sirst, tmp_path / "b", ema_decay=0.5))
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for name, value in last["ema_model"].items():
        torch.testing.assert_close(resumed["ema_model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    card = export(tmp_path / "a" / "best.pt", tmp_path / "w" / "ema.safetensors")["card"]
    assert ("a moving average of the trained weights (decay 0.5 per step, lower in the first steps: "
            "min(decay, (1 + t) / (10 + t)))." in Path(card).read_text())


# --------------------------------------------------------------------------- per-image losses


def _two_crops() -> torch.Tensor:
    """A 3 x 3 target in the first crop of two (16 x 16), none in the second."""
    y = torch.zeros(2, 1, 16, 16)
    y[0, 0, 6:9, 6:9] = 1
    return y


def test_per_image_soft_iou_weighs_each_crop_the_same() -> None:
    y = _two_crops()
    # zero logits: p = 0.5 everywhere; crop 0: I = 4.5, P = 128, G = 9; crop 1: I = 0, P = 128, G = 0
    expected = 1 - (5.5 / (128 + 9 - 4.5 + 1) + 1 / (128 + 1)) / 2
    assert make_loss("softiou-image")(torch.zeros_like(y), y).item() == pytest.approx(expected, rel=1e-6)
    assert make_loss("softiou-image")(torch.where(y > 0, 30.0, -30.0), y).item() == pytest.approx(0.0, abs=1e-6)


def _sls_by_hand(p: np.ndarray, y: np.ndarray) -> float:
    """The sls formula of mim_model.training.loss, one crop at a time, in float64."""
    scale_terms, location_terms = [], []
    for pi, yi in zip(p[:, 0].astype(np.float64), y[:, 0].astype(np.float64), strict=True):
        inter, pred, true = (pi * yi).sum(), pi.sum(), yi.sum()
        iou = (inter + 1) / (pred + true - inter + 1)
        spread = ((pred - true) / 2) ** 2
        alpha = (min(pred, true) + spread) / (max(pred, true) + spread) if true > 0 else 1.0
        scale_terms.append(alpha * iou)
        if true == 0:
            location_terms.append(0.0)
            continue
        rows, cols = np.mgrid[0 : pi.shape[0], 0 : pi.shape[1]]
        polar = []
        for weights in (pi, yi):
            cx = (weights * cols / pi.shape[1]).sum() / weights.sum()
            cy = (weights * rows / pi.shape[0]).sum() / weights.sum()
            polar.append((np.hypot(cx, cy), np.arctan2(cy, cx)))
        (r_p, t_p), (r_g, t_g) = polar
        location_terms.append(1 - min(r_p, r_g) / max(r_p, r_g) + 4 / np.pi**2 * (t_p - t_g) ** 2)
    return 1 - float(np.mean(scale_terms)) + float(np.mean(location_terms))


def test_sls_loss_matches_its_formula_and_is_zero_for_a_perfect_mask() -> None:
    y = _two_crops()
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(y.shape, generator=gen) * 2
    expected = _sls_by_hand(torch.sigmoid(logits).numpy(), y.numpy())
    assert make_loss("sls")(logits, y).item() == pytest.approx(expected, rel=1e-5)
    assert make_loss("sls")(torch.where(y > 0, 30.0, -30.0), y).item() == pytest.approx(0.0, abs=1e-5)


def test_sls_location_term_prefers_a_prediction_centred_on_the_target() -> None:
    """Two predictions of the same area and overlap (so the same IoU and scale weight): the
    one grown evenly around the target costs less than the one grown to one side."""
    y = _two_crops()[:1]
    even = torch.full_like(y, -30.0)
    even[0, 0, 5:10, 6:9] = 30.0  # one row above and one below
    one_side = torch.full_like(y, -30.0)
    one_side[0, 0, 6:11, 6:9] = 30.0  # two rows below
    assert per_image_soft_iou_loss(even, y).item() == pytest.approx(per_image_soft_iou_loss(one_side, y).item())
    assert sls_loss(one_side, y).item() > sls_loss(even, y).item() + 1e-3


@pytest.mark.parametrize("name", ["softiou-image", "sls"])
def test_per_image_losses_push_target_free_crops_to_nothing_and_shard_evenly(name: str) -> None:
    y = _two_crops()
    logits = torch.zeros_like(y, requires_grad=True)
    make_loss(name)(logits, y).backward()
    assert bool((logits.grad[1] > 0).all())  # raising any logit of the empty crop raises the loss
    # data-parallel training: each process takes half the crops and the gradients are averaged
    gen = torch.Generator().manual_seed(4)
    batch = torch.randn(4, 1, 16, 16, generator=gen)
    target = torch.cat([_two_crops(), _two_crops().flip(-1)])
    whole = batch.clone().requires_grad_(True)
    make_loss(name)(whole, target).backward()
    for share in (slice(0, 2), slice(2, 4)):
        part = batch[share].clone().requires_grad_(True)
        make_loss(name)(part, target[share]).backward()
        torch.testing.assert_close(part.grad / 2, whole.grad[share], rtol=1e-5, atol=1e-8)


@needs_sirst
def test_training_runs_with_the_per_image_losses(tiny_sirst: Path, tmp_path: Path) -> None:
    for name in ("softiou-image", "sls"):
        out = train(tiny_train_config(tiny_sirst, tmp_path / name, loss=name, epochs=1, eval_every=1))
        assert out["finished"] and np.isfinite(out["best"]["val"]["iou"])
        record = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
        assert np.isfinite(record["loss"]) and torch.load(tmp_path / name / "last.pt", weights_only=True)["config"]["loss"] == name


@needs_sirst
def test_training_with_stochastic_depth_differs_and_exports_a_plain_network(
    tiny_sirst: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = train(tiny_train_config(tiny_sirst, tmp_path / "plain", epochs=1, eval_every=1))
    with caplog.at_level(logging.INFO, logger="mim_model.training.train"):
        dropped = train(tiny_train_config(tiny_sirst, tmp_path / "dp", epochs=1, eval_every=1, drop_path_rate=0.5))
    assert plain["finished"] and dropped["finished"]
    recipes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe ")]
    assert len(recipes) == 1 and json.loads(recipes[0].removeprefix("recipe "))["drop_path_rate"] == 0.5  # the log holds it
    a = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "dp" / "last.pt", weights_only=True)
    assert b["config"]["drop_path_rate"] == 0.5
    key = "mim_backbone.stages.3.blocks.1.outer_attn.out_proj.weight"  # a block that drops at 0.5
    assert not torch.equal(a["model"][key], b["model"][key])  # same seed, same crops: the drops made it differ
    exported = export(tmp_path / "dp" / "best.pt", tmp_path / "dp.safetensors")
    from mim_model.weights import load_model

    assert load_model(exported["weights"]).config.drop_path_rate == 0.0
    assert "Stochastic depth in training: residual branches dropped for up to 50% of the images" in (
        Path(exported["card"]).read_text())
