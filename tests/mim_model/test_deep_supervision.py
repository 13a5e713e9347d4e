"""Deep supervision: side outputs on MiM's decoder, their loss, and a CPU training run with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mim_model.network import MiM
from mim_model.training.deep_supervision import DeeplySupervisedMiM, deeply_supervised_loss
from mim_model.training.loss import soft_iou_loss
from mim_model.training.train import TrainConfig, TrainError, export, train
from mim_model.weights import load_model
from tests.mim_model.sirst_crops import needs_sirst, tiny_train_config


def _image_and_target(side_px: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(2, 3, side_px, side_px, generator=gen)
    target = torch.zeros(2, 1, side_px, side_px)
    target[0, 0, 20:24, 30:33] = 1.0
    target[1, 0, 40:43, 10:12] = 1.0
    return image, target


def test_the_network_with_side_heads_gives_the_plain_logits_and_full_size_sides() -> None:
    torch.manual_seed(0)
    network = MiM().eval()
    image, _ = _image_and_target()
    with torch.no_grad():
        plain = network(image)
        logits, sides = DeeplySupervisedMiM(network).eval()(image)
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    assert [tuple(s.shape) for s in sides] == [(2, 1, 64, 64)] * 2
    assert not torch.allclose(sides[0], sides[1])


def test_deeply_supervised_loss_is_main_plus_weighted_mean_of_sides() -> None:
    _, target = _image_and_target()
    gen = torch.Generator().manual_seed(5)
    main, side_a, side_b = (torch.randn(2, 1, 64, 64, generator=gen) for _ in range(3))
    expected = soft_iou_loss(main, target) + 0.4 * (soft_iou_loss(side_a, target) + soft_iou_loss(side_b, target)) / 2
    got = deeply_supervised_loss(soft_iou_loss, main, (side_a, side_b), target, 0.4)
    torch.testing.assert_close(got, expected)
    assert deeply_supervised_loss(soft_iou_loss, main, (side_a, side_b), target, 0.0).item() == pytest.approx(
        soft_iou_loss(main, target).item())


def test_side_losses_send_gradient_to_the_heads_and_change_the_decoder_gradient() -> None:
    torch.manual_seed(0)
    model = DeeplySupervisedMiM(MiM())
    image, target = _image_and_target()

    def decoder_grad(weight: float) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        logits, sides = model(image)
        deeply_supervised_loss(soft_iou_loss, logits, sides, target, weight).backward()
        return model.network.uplayer3[0].body[0].weight.grad.clone()

    without = decoder_grad(0.0)
    assert model.heads.side3.weight.grad is not None and float(model.heads.side3.weight.grad.abs().sum()) == 0.0
    with_sides = decoder_grad(1.0)
    assert float(model.heads.side3.weight.grad.abs().sum()) > 0 and float(model.heads.side2.weight.grad.abs().sum()) > 0
    assert not torch.allclose(without, with_sides)


def test_config_refuses_a_negative_weight() -> None:
    with pytest.raises(TrainError, match=r"deep_supervision: expected a loss weight in \[0, 10\], got -0.5"):
        TrainConfig(data_dir="d", out_dir="o", deep_supervision=-0.5)


def _config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    return tiny_train_config(data, out, eval_every=1, **overrides)


@needs_sirst
def test_training_with_side_heads_resumes_them_and_exports_the_plain_network(tiny_sirst: Path, tmp_path: Path) -> None:
    run = tmp_path / "ds"
    first = train(_config(tiny_sirst, run, deep_supervision=0.5), max_epochs_this_run=1)
    assert first["epochs_done"] == 1
    saved = torch.load(run / "last.pt", weights_only=True)
    assert set(saved["decoder_heads"]) == {"side3.weight", "side3.bias", "side2.weight", "side2.bias"}
    assert not any(key.startswith(("side", "heads")) for key in saved["model"])

    with pytest.raises(TrainError, match=r"last\.pt: expected a run without deep supervision.*got one trained with it"):
        train(_config(tiny_sirst, run))
    done = train(_config(tiny_sirst, run, deep_supervision=0.5))
    assert done["finished"] and done["epochs_done"] == 2
    resumed = torch.load(run / "last.pt", weights_only=True)
    assert not torch.equal(resumed["decoder_heads"]["side3.weight"], saved["decoder_heads"]["side3.weight"])

    exported = export(run / "best.pt", tmp_path / "ds.safetensors")
    assert isinstance(load_model(exported["weights"]), MiM)
    assert "Deep supervision in training: side outputs on the decoder's H/16 and H/8 maps" in (
        Path(exported["card"]).read_text())

    plain = tmp_path / "plain"
    train(_config(tiny_sirst, plain), max_epochs_this_run=1)
    with pytest.raises(TrainError, match=r"last\.pt: expected decoder side heads \(deep_supervision 0\.5\), got a run"):
        train(_config(tiny_sirst, plain, deep_supervision=0.5))
