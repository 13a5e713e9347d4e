"""Fixtures of the mim_model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mim_model.sirst_crops import tiny_sirst_at


@pytest.fixture
def tiny_sirst(tmp_path: Path) -> Path:
    """A SIRST-layout folder: four train and two val images of 64 x 64 px, real SIRST crops."""
    return tiny_sirst_at(tmp_path / "sirst")
