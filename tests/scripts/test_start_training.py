"""scripts/gpu/start_training.sh: independent runs started side by side (one per GPU of a
machine of several) keep their own code copy, output folder and log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.mim_model.sirst_crops import tiny_sirst_at

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu" / "start_training.sh"


def _summary(log: Path) -> dict | None:
    """The JSON summary the CLI prints at the end of a run, once it is there."""
    text = log.read_text() if log.exists() else ""
    start = text.find("{\n")
    if start < 0 or not text.rstrip().endswith("}"):
        return None
    return json.loads(text[start:])


def test_two_named_runs_side_by_side(tmp_path: Path) -> None:
    data = tiny_sirst_at(tmp_path / "sirst")
    checkout = tmp_path / "checkout"  # the packages only, as links (the script copies the checkout)
    checkout.mkdir()
    for package in ("pipeline", "mim_model"):
        (checkout / package).symlink_to(REPO / package)
    root = tmp_path / "train"
    env = {**os.environ, "TRAIN_ROOT": str(root), "SIRST_DIR": str(data), "PYTHON": sys.executable,
           "NO_EXPORT": "1"}
    common = ["--epochs", "1", "--eval-every", "1", "--crop-px", "64", "--batch-size", "2",
              "--num-workers", "0", "--device", "cpu"]
    # b exports its weights without a test report (REPORT_SPLIT empty), a exports nothing
    extra_env = {"a": {}, "b": {"NO_EXPORT": "0", "REPORT_SPLIT": ""}}
    for name, lr in (("a", "1e-3"), ("b", "2e-3")):
        started = subprocess.run(["bash", str(SCRIPT), "5", *common, "--lr", lr], cwd=checkout,
                                 env={**env, "RUN_NAME": name, **extra_env[name]}, capture_output=True, text=True,
                                 check=False)
        assert started.returncode == 0, started.stderr
        assert f"training {name} started" in started.stdout and f"{root}/{name}.log" in started.stdout
    deadline = time.monotonic() + 300
    summaries: dict[str, dict | None] = {"a": None, "b": None}
    while time.monotonic() < deadline and not all(summaries.values()):
        summaries = {name: _summary(root / f"{name}.log") for name in summaries}
        time.sleep(1)
    for name, lr in (("a", 1e-3), ("b", 2e-3)):
        summary = summaries[name]
        assert summary is not None, (root / f"{name}.log").read_text()[-2000:]
        assert summary["finished"] and summary["last_checkpoint"] == str(root / name / "last.pt")
        assert torch.load(root / name / "last.pt", weights_only=True)["config"]["lr"] == lr
        assert (root / f"code-{name}" / "pipeline").exists()
    assert not (root / "a-export").exists()
    card = (root / "b-export" / "mim_sirst.md").read_text()
    assert (root / "b-export" / "mim_sirst.safetensors").is_file() and "(report" not in card
    assert summaries["b"]["export"]["report"] is None
    assert not (root / "run").exists() and not (root / "train.log").exists()


def test_a_run_needs_its_minutes(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False,
                            env={**os.environ, "TRAIN_ROOT": str(tmp_path)})
    assert result.returncode != 0 and "minutes" in result.stderr
    assert not (tmp_path / "run").exists()
