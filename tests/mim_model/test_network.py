"""MiM network: official parameter tree, golden outputs, input contract, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mim_model import MiM
from mim_model import layout as tok
from mim_model.errors import InputShapeError

from .golden import formula_state_dict, golden_input, golden_logits, official_entries

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def golden_model() -> MiM:
    model = MiM(keep_relative_pos=True).eval()
    model.load_state_dict(formula_state_dict(), strict=True)
    return model


def test_parameter_tree_is_the_official_one():
    model = MiM(keep_relative_pos=True)
    state = model.state_dict()
    entries = official_entries()
    assert list(state) == [e["name"] for e in entries] or set(state) == {e["name"] for e in entries}
    for entry in entries:
        assert list(state[entry["name"]].shape) == entry["shape"], entry["name"]
    assert sum(p.numel() for p in model.parameters()) == 8_597_681
    lean = MiM()
    assert sum(p.numel() for p in lean.parameters()) == 8_597_681 - 3_735_552
    assert not any(k.endswith("relative_pos") for k in lean.state_dict())


@pytest.mark.parametrize("backend", ["ref", "auto"])
@pytest.mark.parametrize("side_px", [64, 128, 192])
def test_official_layout_reproduces_golden_logits(golden_model, monkeypatch, backend, side_px):
    monkeypatch.setenv("IRSCAN_SCAN_BACKEND", backend)
    with torch.no_grad():
        logits = golden_model(golden_input(side_px))[0, 0].numpy()
    expected = golden_logits(side_px)
    rel = np.linalg.norm(logits - expected) / np.linalg.norm(expected)
    assert rel < 1e-4, f"relative L2 error {rel:.2e} at {side_px}px with backend {backend}"


def test_spatial_layout_has_same_parameters_but_another_function(golden_model):
    spatial = MiM(layout="spatial", keep_relative_pos=True).eval()
    spatial.load_state_dict(golden_model.state_dict(), strict=True)
    x = golden_input(64)
    with torch.no_grad():
        a, b = golden_model(x), spatial(x)
    assert a.shape == b.shape == (1, 1, 64, 64)
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 512, 256), (1, 3, 480, 480), (1, 2, 64, 64), (3, 64, 64), (1, 3, 0, 0)],
)
def test_bad_input_shapes_are_refused_with_the_rule(shape):
    model = MiM()
    with pytest.raises(InputShapeError, match=r"expected"):
        model(torch.zeros(shape))


def test_grey_input_is_replicated(golden_model):
    x = golden_input(64)[:, :1]
    with torch.no_grad():
        grey = golden_model(x)
        rgb = golden_model(x.expand(-1, 3, -1, -1).contiguous())
    torch.testing.assert_close(grey, rgb)


def test_batch_items_do_not_mix(golden_model):
    x = torch.cat([golden_input(64), golden_input(64).flip(-1)])
    with torch.no_grad():
        both = golden_model(x)
        second = golden_model(x[1:])
    rel = (both[1:] - second).norm() / second.norm()
    assert rel < 1e-5, f"batch item 1 changes by relative L2 {rel:.2e} when item 0 is present"


def test_spatial_word_layout_puts_each_word_at_its_pixel():
    """Stem words -> spatial word image must give back the stem's feature map exactly."""
    torch.manual_seed(0)
    batch, channels, side = 2, 4, 32  # word image of an input of 64 px
    feature = torch.randn(batch, channels, side, side)
    unfolded = F.unfold(feature, kernel_size=4, stride=4)
    n = unfolded.shape[-1]
    inner = unfolded.transpose(1, 2).reshape(batch * n, channels, 16).transpose(1, 2)
    image = tok.inner_tokens_to_image(inner, batch, side // 4, side // 4, "spatial")
    torch.testing.assert_close(image, feature)
    torch.testing.assert_close(tok.inner_image_to_tokens(image, "spatial"), inner)


def test_official_scan_layout_is_the_raw_view_of_the_spec():
    """Spec 2.5: pseudo-pixel p, channel k holds T[(p*C+k) mod N, (p*C+k) div N]."""
    batch, h, w, channels = 1, 4, 4, 8
    n = h * w
    tokens = torch.arange(batch * n * channels, dtype=torch.float32).reshape(batch, n, channels)
    image = tok.tokens_to_scan_image(tokens, h, w, "official").reshape(n, channels)
    for p in range(n):
        for k in range(channels):
            flat = p * channels + k
            assert image[p, k] == tokens[0, flat % n, flat // n]


def test_outer_layouts_round_trip():
    tokens = torch.randn(2, 64, 16)
    for lay in ("official", "spatial"):
        image = tok.outer_tokens_to_image(tokens, 8, 8, lay)
        torch.testing.assert_close(tok.outer_image_to_tokens(image, lay), tokens)
    spatial = tok.outer_tokens_to_image(tokens, 8, 8, "spatial")
    torch.testing.assert_close(spatial[1, :, 2, 3], tokens[1, 2 * 8 + 3])


def test_backward_reaches_every_used_parameter():
    torch.manual_seed(0)
    model = MiM(layout="spatial").train()
    x = torch.randn(2, 1, 64, 64)
    loss = model(x).sigmoid().mean()
    loss.backward()
    unused = {"mim_backbone.norm.weight", "mim_backbone.norm.bias"}
    for name, param in model.named_parameters():
        if name in unused:
            assert param.grad is None
            continue
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


# --------------------------------------------------------------------------- stochastic depth


def test_drop_path_keeps_or_drops_whole_images_and_keeps_the_expectation():
    from mim_model.blocks import DropPath

    drop = DropPath(0.5).train()
    torch.manual_seed(0)
    branch = torch.ones(64 * 3, 16, 4)  # 64 images of 3 sentences each, image-major
    out = drop(branch, 64).reshape(64, 3 * 16 * 4)
    per_image = out[:, 0]
    assert set(per_image.tolist()) <= {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - 0.5)
    assert torch.equal(out, per_image[:, None].expand_as(out))  # all rows of an image alike
    assert 16 <= int((per_image == 0).sum()) <= 48  # about half of 64 dropped
    many = torch.stack([DropPath(0.3).train()(torch.ones(4000, 1)) for _ in range(5)]).mean()
    assert abs(float(many) - 1.0) < 0.02
    assert torch.equal(drop.eval()(branch, 64), branch)
    with pytest.raises(ValueError, match=r"DropPath rate: expected a rate in \[0, 1\), got 1.0"):
        DropPath(1.0)


def test_drop_path_rates_rise_over_all_blocks_and_act_in_training_only():
    model = MiM(layout="spatial", drop_path_rate=0.14)
    rates = [b.drop_path.rate for s in model.mim_backbone.stages for b in s.blocks]
    assert rates == pytest.approx([0.14 * i / 7 for i in range(8)])
    plain = MiM(layout="spatial")
    plain.load_state_dict(model.state_dict(), strict=True)  # no parameters of its own
    x = torch.randn(4, 1, 64, 64)
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
        model.train()
        plain.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(1)
        b = plain(x)
    assert not torch.allclose(a, b)  # some branches of some images were dropped
    with pytest.raises(ValueError, match=r"drop_path_rate: expected a rate in \[0, 1\), got -0.1"):
        MiM(drop_path_rate=-0.1)
