"""scripts/gpu/save_run.sh: a training run sent home through the device tool's $OUT.

$OUT brings back 64 MiB a call, so a run of 99 MB leaves in two calls; both must cut the
same tar (the pieces of different tars would not fit together), and the pieces must
rebuild the run byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu" / "save_run.sh"
PIECE_BYTES = 16 * 1024 * 1024 - 4096

pytestmark = pytest.mark.skipif(shutil.which("tar") is None or shutil.which("split") is None,
                                reason="needs GNU tar and split")


def _save(run: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", str(SCRIPT), str(run), *args], env={**os.environ, "OUT": str(out)},
                          capture_output=True, text=True, check=False)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    (run / "last.pt").write_bytes(rng.bytes(5 * PIECE_BYTES + 123))  # 6 pieces with the others
    (run / "best.pt").write_bytes(rng.bytes(1000))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return run


def test_two_calls_send_one_tar_that_rebuilds_the_run(run_dir: Path, tmp_path: Path) -> None:
    first = _save(run_dir, tmp_path / "out1")
    assert first.returncode == 0, first.stderr
    assert "pieces 0..3 of 6 sent; next call: bash scripts/gpu/save_run.sh" in first.stdout
    sent1 = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert sent1 == ["run.sha256"] + [f"run.tar.piece-0{i}" for i in range(4)]
    assert sum(p.stat().st_size for p in (tmp_path / "out1").iterdir()) < 64 * 1024 * 1024
    time.sleep(1.1)  # a later call copies the files at another time: the tar must not change
    second = _save(run_dir, tmp_path / "out2", "4")
    assert second.returncode == 0, second.stderr
    assert "pieces 4..5 of 6 sent; run.tar complete" in second.stdout
    sha1 = (tmp_path / "out1" / "run.sha256").read_text()
    assert sha1 == (tmp_path / "out2" / "run.sha256").read_text()

    pieces = sorted([*(tmp_path / "out1").glob("run.tar.piece-*"), *(tmp_path / "out2").glob("run.tar.piece-*")],
                    key=lambda p: p.name)
    rebuilt = b"".join(p.read_bytes() for p in pieces)
    assert hashlib.sha256(rebuilt).hexdigest() == sha1.split()[0]
    tar_path = tmp_path / "run.tar"
    tar_path.write_bytes(rebuilt)
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "home", filter="data")
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        assert (tmp_path / "home" / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_bad_first_piece_and_empty_run_are_one_line_errors(run_dir: Path, tmp_path: Path) -> None:
    beyond = _save(run_dir, tmp_path / "out", "6")
    assert beyond.returncode != 0
    assert beyond.stderr.strip() == "save_run: first piece 6: expected one of 0..5 (run.tar has 6 pieces)"
    (tmp_path / "empty").mkdir()
    empty = _save(tmp_path / "empty", tmp_path / "out")
    assert empty.returncode != 0
    assert "holds no last.pt, best.pt or metrics.jsonl" in empty.stderr
