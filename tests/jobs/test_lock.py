"""pipeline.lock: exclusive output lock across real processes, stale take-over, re-entrancy."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import LockedError
from pipeline.lock import LOCK_NAME, make_run_id, output_lock, read_lock

REPO = Path(__file__).resolve().parents[2]


def _start_holder(out: Path, run_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.jobs._lock_holder", str(out), run_id],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "locked", line
    return proc


def test_second_process_is_refused_then_takes_over_after_sigkill(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    holder = _start_holder(out, "run-A")
    try:
        info = read_lock(out)
        assert info is not None and info.pid == holder.pid and info.run_id == "run-A"
        with pytest.raises(LockedError) as exc, output_lock(out, "run-B"):
            pass
        message = str(exc.value)
        assert "\n" not in message
        for needle in (str(out), socket.gethostname(), f"pid {holder.pid}", "run-A", info.started):
            assert needle in message
        # a third process is refused too
        other = subprocess.run(
            [sys.executable, "-m", "tests.jobs._lock_holder", str(out), "run-C"],
            cwd=REPO, input="", capture_output=True, text=True, timeout=60, check=False,
        )
        assert other.returncode == 3 and "run-A" in other.stdout
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without cleaning up: its lock is stale on this host
    assert (out / LOCK_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="pipeline.lock"), output_lock(out, "run-B") as mine:
        assert mine.pid == os.getpid() and read_lock(out).run_id == "run-B"  # type: ignore[union-attr]
    assert "stale lock" in caplog.text and "run-A" in caplog.text
    assert not (out / LOCK_NAME).exists()


def test_lock_released_by_clean_exit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = _start_holder(out, "run-A")
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    assert not (out / LOCK_NAME).exists()
    with output_lock(out, "run-B"):
        assert read_lock(out).run_id == "run-B"  # type: ignore[union-attr]


def test_released_on_exception_and_reentrant(tmp_path: Path) -> None:
    out = tmp_path / "o"
    with pytest.raises(RuntimeError), output_lock(out, "r1"):
        raise RuntimeError("boom")
    assert not (out / LOCK_NAME).exists()
    with output_lock(out, "outer") as outer:
        with output_lock(out, "inner") as inner:
            assert inner == outer  # same lock, outer run id kept
        assert (out / LOCK_NAME).exists()  # the inner exit does not release it
        assert read_lock(out).run_id == "outer"  # type: ignore[union-attr]
    assert not (out / LOCK_NAME).exists()


def _fake_lock(out: Path, **fields: object) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": None,
            "run_id": "old", "started": "2026-01-01T00:00:00Z", "token": "t"}
    data.update(fields)
    (out / LOCK_NAME).write_text(json.dumps(data))


def test_other_host_is_never_taken_over(tmp_path: Path) -> None:
    _fake_lock(tmp_path, host="elsewhere.example", pid=1)
    expected = r"host elsewhere\.example, pid 1, run id old, since 2026-01-01T00:00:00Z"
    with pytest.raises(LockedError, match=expected), output_lock(tmp_path, "new"):
        pass
    assert read_lock(tmp_path).host == "elsewhere.example"  # type: ignore[union-attr]


def test_reused_pid_is_stale(tmp_path: Path) -> None:
    # our own pid is alive, but the recorded start time is another process's: pid reuse
    _fake_lock(tmp_path, pid=os.getpid(), pid_started=1.0)
    with output_lock(tmp_path, "new"):
        assert read_lock(tmp_path).run_id == "new"  # type: ignore[union-attr]


def test_live_pid_same_start_is_held(tmp_path: Path) -> None:
    import psutil

    parent = os.getppid()
    _fake_lock(tmp_path, pid=parent, pid_started=psutil.Process(parent).create_time())
    with pytest.raises(LockedError, match=f"pid {parent}"), output_lock(tmp_path, "new"):
        pass


def _race(out: str, barrier: multiprocessing.synchronize.Barrier, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    barrier.wait()
    try:
        with output_lock(out, f"p{os.getpid()}"):
            queue.put("won")
            barrier.wait()  # hold until every contender has tried
    except LockedError:
        queue.put("lost")
        barrier.wait()


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_exactly_one_of_many_processes_wins(tmp_path: Path, stale: bool) -> None:
    if stale:  # everyone finds the same dead holder's lock and tries to take it over
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        _fake_lock(tmp_path, pid=dead.pid)
    ctx = multiprocessing.get_context("fork")
    n = 4
    barrier = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    results = sorted(queue.get(timeout=5) for _ in range(n))
    assert results == ["lost"] * (n - 1) + ["won"]
    assert not (tmp_path / LOCK_NAME).exists()


def test_run_id_format() -> None:
    rid = make_run_id()
    assert len(rid) == len("20260101T020000Z-3fa2c1") and rid[8] == "T" and rid[15] == "Z"
    assert make_run_id() != rid
