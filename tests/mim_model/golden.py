"""The formula weights and input of tests/data/REFERENCE.md (golden outputs of the
official network)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "data"


def official_entries() -> list[dict]:
    return json.loads((DATA / "mim_official_state_dict.json").read_text())["state_dict"]


def formula_tensor(name: str, shape: list[int]) -> torch.Tensor:
    n = int(np.prod(shape)) if shape else 1
    k = np.arange(n, dtype=np.float64)
    s = np.sin(0.7 * k + (zlib.crc32(name.encode()) % 1000) / 100)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        v = 1 + 0.25 * (1 + s)
    elif leaf == "running_mean":
        v = 0.05 * s
    elif leaf == "A_logs":
        v = np.log(1 + (k % shape[-1]))
    elif leaf == "Ds":
        v = 1 + 0.1 * s
    elif leaf == "dt_projs_bias":
        v = -4 + 0.5 * s
    elif len(shape) == 1 and leaf == "weight":
        v = 1 + 0.3 * s
    elif len(shape) == 1:
        v = 0.1 * s
    else:
        v = 1.5 * s / np.sqrt(n / shape[0])
    return torch.from_numpy(v.reshape(shape).astype(np.float32))


def formula_state_dict() -> dict[str, torch.Tensor]:
    state = {}
    for entry in official_entries():
        if entry["dtype"].startswith("int"):
            state[entry["name"]] = torch.zeros(entry["shape"], dtype=torch.int64)
        else:
            state[entry["name"]] = formula_tensor(entry["name"], entry["shape"])
    return state


def golden_input(side_px: int) -> torch.Tensor:
    i = np.arange(side_px, dtype=np.float64)[:, None]
    j = np.arange(side_px, dtype=np.float64)[None, :]
    x = np.stack([np.sin(0.11 * i + c) * np.cos(0.07 * j - c) for c in range(3)])[None]
    return torch.from_numpy(x.astype(np.float32))


def golden_logits(side_px: int) -> np.ndarray:
    return np.load(DATA / "mim_golden_outputs.npz")[f"logits_{side_px}"]
