"""Fixtures of the scan tests: a real local Ray a module, random MiM weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch

from mim_model import MiM
from mim_model.weights import save_safetensors


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One real local Ray for the module (the runner joins it instead of starting its own)."""
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file of a randomly initialised MiM (seed 0), threshold 0.5."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    return save_safetensors(MiM(layout="spatial"), path, metadata={"threshold": "0.5"})
