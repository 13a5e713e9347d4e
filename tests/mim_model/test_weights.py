"""Weights: the authors' checkpoint formats, safetensors round trip, clear mismatch errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mim_model import MiM
from mim_model.errors import WeightsError
from mim_model.weights import load_model, load_official_checkpoint, read_metadata, save_safetensors, soup_runs

from .golden import formula_state_dict, golden_input, golden_logits


def _rel_error(model: MiM) -> float:
    with torch.no_grad():
        out = model(golden_input(64))[0, 0].numpy()
    ref = golden_logits(64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        lambda sd: {k: v for k, v in sd.items() if not k.endswith("relative_pos")},
    ],
    ids=["plain", "state_dict", "model-module-prefix", "without-relative-pos"],
)
def test_official_checkpoint_formats_load_and_reproduce_golden(tmp_path, wrap):
    path = tmp_path / "mim.pth"
    torch.save(wrap(formula_state_dict()), path)
    model = load_official_checkpoint(path)
    assert model.config.layout == "official"
    assert _rel_error(model) < 1e-4


def test_official_checkpoint_mismatch_names_what_differs(tmp_path):
    state = formula_state_dict()
    state.pop("head.block.4.bias")
    state["deconv3.norm.weight"] = torch.ones(7)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_official_checkpoint(path)
    message = str(info.value)
    assert "broken.pth" in message and "head.block.4.bias" in message
    assert "deconv3.norm.weight expected (128,) got (7,)" in message


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"head.block.4.bias": torch.zeros(1)}, "hook": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(WeightsError, match="weights-only"):
        load_official_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="notes.pth"):
        load_official_checkpoint(path)
    with pytest.raises(WeightsError, match="not found"):
        load_official_checkpoint(tmp_path / "missing.pth")


def test_safetensors_round_trip_in_float16(tmp_path):
    model = MiM(layout="spatial").eval()
    model.load_state_dict(
        {k: v for k, v in formula_state_dict().items() if not k.endswith("relative_pos")}, strict=True
    )
    path = save_safetensors(model, tmp_path / "w.safetensors", metadata={"threshold": "0.45"})
    meta = read_metadata(path)
    assert meta["threshold"] == "0.45" and '"layout": "spatial"' in meta["mim_config"]
    assert path.stat().st_size < 10 * 1024 * 1024  # float16, no relative_pos
    loaded = load_model(path)
    assert loaded.config.layout == "spatial"
    x = golden_input(64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    rel = float((a - b).norm() / a.norm())
    # formula weights give logits of std ~10, which magnifies float16 rounding
    assert rel < 2e-2, f"float16 weights change logits by relative L2 {rel:.2e}"


def test_weights_file_that_is_not_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="w.safetensors"):
        load_model(path)


def test_soup_runs_resolves_a_soup_of_soups_to_the_runs_and_their_shares():
    def run(name):
        return {"file": f"{name}.safetensors", "sha256": name * 8, "train_config": {"seed": len(name)}}

    inner = {"file": "C.safetensors", "sha256": "c" * 64, "train_config": {},
             "soup_members": [run("a"), run("bb"), run("ccc")]}
    # E = (C + C + C + d) / 4 = (a + bb + ccc + d) / 4; F = (E + E + x) / 3
    e = {"file": "E.safetensors", "sha256": "e" * 64, "train_config": {},
         "soup_members": [inner, inner, inner, run("dddd")]}
    runs = soup_runs({"soup_members": json.dumps([e, e, run("x")])})
    shares = {member["file"]: share for member, share in runs}
    assert list(shares) == ["a.safetensors", "bb.safetensors", "ccc.safetensors", "dddd.safetensors", "x.safetensors"]
    assert shares["x.safetensors"] == pytest.approx(1 / 3)
    for name in ("a", "bb", "ccc", "dddd"):
        assert shares[f"{name}.safetensors"] == pytest.approx(2 / 3 / 4)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert runs[1][0]["train_config"] == {"seed": 2}
    # weights that are no soup are one run
    assert soup_runs({"train_config": json.dumps({"seed": 0})}) == [({"train_config": {"seed": 0}}, 1.0)]


def test_weights_file_describes_the_network_without_stochastic_depth(tmp_path):
    model = MiM(layout="spatial", drop_path_rate=0.1)
    path = save_safetensors(model, tmp_path / "w.safetensors")
    assert '"drop_path_rate": 0.0' in read_metadata(path)["mim_config"]
    assert load_model(path).config.drop_path_rate == 0.0
