"""An exclusive lock on an output folder, so two runs never write the same outputs.

``OUT/.irscan.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and
NFSv3+) and holds JSON: ``host``, ``pid``, ``pid_started`` (the process's start time, which
tells a reused pid from the holder), ``run_id``, ``started`` (UTC ISO 8601) and a random
``token``. It is removed when the holder leaves :func:`output_lock`.

A lock left by a process that died (SIGKILL, OOM, node reboot) is *stale* when it names this
host and its pid is not running (or is running but started at another time: a reused pid).
A stale lock is taken over with a warning. A lock held by another host is never taken over
automatically: this host cannot tell whether that process is alive; the error says which
file to delete once that run is known to be gone.

Take-overs are serialised with ``flock`` on ``OUT/.irscan.lock.takeover`` and re-check the
lock's content under it, so two processes that find the same stale lock cannot both win,
and neither removes a fresh lock taken in between.

Re-entrant within one process: a nested :func:`output_lock` on a folder that this process
already holds succeeds at once (and keeps the outer run id), so ``irscan run`` can hold the
lock around :func:`pipeline.runner.run_scans`, which also takes it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import LockedError

__all__ = ["LOCK_NAME", "LockInfo", "make_run_id", "output_lock", "read_lock"]

log = logging.getLogger(__name__)

LOCK_NAME = ".irscan.lock"
_TAKEOVER_SUFFIX = ".takeover"
_PID_START_TOLERANCE_S = 1.0

_held: dict[str, tuple[LockInfo, int]] = {}  # resolved lock path -> (info, depth)
_held_guard = threading.Lock()


@dataclass(frozen=True, slots=True)
class LockInfo:
    """The content of a lock file."""

    path: str
    host: str
    pid: int
    pid_started: float | None
    run_id: str
    started: str
    token: str

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "run_id": self.run_id,
            "started": self.started,
            "token": self.token,
        }

    def describe(self) -> str:
        """``host h, pid 123, run id R, since 2026-01-01T00:00:00Z``."""
        return f"host {self.host}, pid {self.pid}, run id {self.run_id}, since {self.started}"


def make_run_id(now: _dt.datetime | None = None) -> str:
    """A sortable, unique run id: UTC timestamp + 6 random hex digits, ``20260101T020000Z-3fa2c1``."""
    now = now or _dt.datetime.now(_dt.UTC)
    return f"{now.astimezone(_dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _process_start(pid: int) -> float | None:
    """Start time of a process (epoch seconds), or None when it cannot be told."""
    try:
        import psutil  # type: ignore[import-untyped]

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - psutil missing, NoSuchProcess, AccessDenied: unknown
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def read_lock(out_dir: str | os.PathLike[str]) -> LockInfo | None:
    """The lock of an output folder, or None when there is none (or it is unreadable)."""
    path = Path(out_dir) / LOCK_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockInfo(
            path=str(path),
            host=str(data["host"]),
            pid=int(data["pid"]),
            pid_started=None if data.get("pid_started") is None else float(data["pid_started"]),
            run_id=str(data["run_id"]),
            started=str(data["started"]),
            token=str(data.get("token", "")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s: unreadable lock file (%s)", path, err)
        return None


def _is_stale(info: LockInfo) -> bool:
    if info.host != socket.gethostname():
        return False
    if not _pid_alive(info.pid):
        return True
    if info.pid_started is not None:
        now_started = _process_start(info.pid)
        if now_started is not None and abs(now_started - info.pid_started) > _PID_START_TOLERANCE_S:
            return True  # the pid was reused by another process
    return False


def _try_create(path: Path, info: LockInfo) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(info.to_json(), indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _remove_if_same(path: Path, expected: LockInfo | None) -> bool:
    """Under the take-over guard: delete the lock if it still is ``expected`` (or unreadable)."""
    guard = path.with_name(path.name + _TAKEOVER_SUFFIX)
    with open(guard, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            current = read_lock(path.parent)
            if expected is None:
                if current is not None:
                    return False  # became readable meanwhile: judge it again
            elif current is None or current.token != expected.token:
                return False  # gone or replaced by a fresh lock meanwhile
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _acquire(out: Path, run_id: str) -> LockInfo:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    pid = os.getpid()
    info = LockInfo(
        path=str(path),
        host=socket.gethostname(),
        pid=pid,
        pid_started=_process_start(pid),
        run_id=run_id,
        started=_utc_now(),
        token=secrets.token_hex(8),
    )
    for _ in range(5):
        if _try_create(path, info):
            log.debug("%s: lock taken (run %s)", out, run_id)
            return info
        holder = read_lock(out)
        if holder is None:
            if not path.exists():
                continue  # released meanwhile: try again
            # exists but unreadable: a holder killed mid-write, or one writing right now
            stat = path.stat()
            age = _dt.datetime.now().timestamp() - stat.st_mtime
            if age < 5.0:
                raise LockedError(
                    f"{out}: locked by another irscan run (lock file {path} is being written);"
                    " try again in a moment"
                )
            log.warning("%s: lock file %s is unreadable and %.0f s old; taking it over", out, path, age)
            _remove_if_same(path, None)
            continue
        if _is_stale(holder):
            log.warning(
                "%s: taking over a stale lock (%s; that process is gone)", out, holder.describe()
            )
            _remove_if_same(path, holder)
            continue
        raise LockedError(
            f"{out}: locked by another irscan run ({holder.describe()}); wait for it to finish,"
            f" or delete {path} if that run is gone"
        )
    raise LockedError(f"{out}: could not take the lock {path} after several attempts (contention)")


def _release(info: LockInfo) -> None:
    path = Path(info.path)
    current = read_lock(path.parent)
    if current is None or current.token != info.token:
        log.warning(
            "%s: our lock was removed or taken over while we ran (now: %s)",
            path.parent,
            current.describe() if current else "no lock",
        )
        return
    try:
        path.unlink()
    except OSError as err:
        if err.errno != errno.ENOENT:
            log.warning("%s: cannot remove the lock file: %s", path, err)


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike[str], run_id: str | None = None) -> Iterator[LockInfo]:
    """Hold the exclusive lock of an output folder (created if missing) for the block.

    Parameters
    ----------
    out_dir : path-like
        The output folder (``OUT``); the lock is ``OUT/.irscan.lock``.
    run_id : str, optional
        Recorded in the lock and shown to other runs; default :func:`make_run_id`.

    Yields
    ------
    LockInfo
        The lock held (the outer one when this process already holds it).

    Raises
    ------
    LockedError
        Another live process holds the lock: the message names the folder, the holder's
        host, pid and run id and since when.
    """
    out = Path(out_dir)
    key = os.path.realpath(out / LOCK_NAME)
    with _held_guard:
        held = _held.get(key)
        if held is not None and held[0].pid != os.getpid():
            held = None  # inherited through fork: the child does not hold the lock
        if held is not None:
            _held[key] = (held[0], held[1] + 1)
    if held is not None:
        try:
            yield held[0]
        finally:
            with _held_guard:
                info, depth = _held[key]
                _held[key] = (info, depth - 1)
        return
    info = _acquire(out, run_id or make_run_id())
    key = os.path.realpath(info.path)
    with _held_guard:
        _held[key] = (info, 1)
    try:
        yield info
    finally:
        with _held_guard:
            _held.pop(key, None)
        _release(info)
