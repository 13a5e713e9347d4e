"""Run a job file under the output lock and record the run: shared by ``irscan run``,
``jobs.cron`` and ``jobs.submit_entry``.

Each run gets a run id (:func:`pipeline.lock.make_run_id` unless given) and leaves
``OUTPUT/_runs/<run_id>.json``: job, host, pid, start/end time (UTC), status and exit code,
per-scene tile counts and detections, failed tiles, and the error for runs that stopped.

Exit codes (:data:`EXIT_CODES`)
-------------------------------
====  ==============  =========================================================
code  status          meaning
====  ==============  =========================================================
0     ok              every tile done or skipped (all nodata)
1     failed_tiles    the run finished but some tiles failed after their retries
2     bad_input       job file, scene, option or output problem (one-line message)
3     locked          another run holds the output's lock
4     error           unexpected error (traceback in the log)
====  ==============  =========================================================
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, IrscanError, LockedError
from pipeline.jobspec import JobSpec, expand_inputs, job_key_message, load_job
from pipeline.lock import make_run_id, output_lock

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_FAILED_TILES",
    "EXIT_LOCKED",
    "EXIT_OK",
    "RUNS_DIR",
    "RunOutcome",
    "add_log_file",
    "check_run_id",
    "execute_job_file",
    "run_job",
]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED_TILES, EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_ERROR = 0, 1, 2, 3, 4
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILED_TILES: "failed_tiles",
    EXIT_BAD_INPUT: "bad_input",
    EXIT_LOCKED: "locked",
    EXIT_ERROR: "error",
}
RUNS_DIR = "_runs"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended.

    Attributes
    ----------
    run_id : str
    exit_code : int
        See the module docstring.
    status : str
        ``EXIT_CODES[exit_code]``.
    message : str
        One line for the terminal / cron mail.
    record_path : Path or None
        ``OUTPUT/_runs/<run_id>.json`` when it was written.
    failed_tiles : list of str
        ``"scene/tile: error"`` per failed tile.
    record : dict
        The run record.
    """

    run_id: str
    exit_code: int
    status: str
    message: str
    record_path: Path | None = None
    failed_tiles: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe file name (letters, digits, ``._-``, <= 128).

    Raises
    ------
    InputError
        It is not.
    """
    if not _RUN_ID.match(run_id):
        raise InputError(
            f"run id: expected letters, digits, '.', '_' or '-' (at most 128), got {run_id!r}"
        )
    return run_id


def add_log_file(log_dir: str | os.PathLike[str], run_id: str, level: int = logging.INFO) -> Path:
    """Send the root logger's records (``level`` and up) to ``log_dir/<run_id>.log`` too."""
    folder = Path(log_dir)
    path = folder / f"{run_id}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as err:
        raise InputError(
            f"log dir {folder}: expected a folder to write {path.name} into, got {err.strerror or err}"
        ) from None
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return path


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_record(out: Path, record: dict[str, Any]) -> Path:
    folder = out / RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['run_id']}.json"
    tmp = folder / f".{record['run_id']}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_job(spec: JobSpec, *, run_id: str | None = None) -> RunOutcome:
    """Run a validated job under the output lock; write the run record.

    Scans with :func:`pipeline.runner.run_scans` (``resume=True``, so finished tiles of an
    earlier, interrupted run are kept; with ``scan.overwrite`` the outputs are replaced
    instead), and post-processes each scene on Ray (:func:`pipeline.postprocess.postprocess_scene`,
    as the job's ``postprocess:`` asks).

    Errors are not raised: they become the outcome's exit code (see the module docstring)
    and are recorded.

    Returns
    -------
    RunOutcome
    """
    run_id = check_run_id(run_id) if run_id else make_run_id()
    out = Path(spec.output)
    start = time.time()
    record: dict[str, Any] = {
        "run_id": run_id,
        "job": spec.name,
        "job_file": spec.source,
        "output": spec.output,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _utc(start),
        "overwrite": bool(spec.config.overwrite),
    }

    def finish(code: int, message: str, **extra: Any) -> RunOutcome:
        end = time.time()
        record.update(
            ended=_utc(end), wall_s=round(end - start, 3), exit_code=code,
            status=EXIT_CODES[code], message=message, **extra,
        )
        path: Path | None = None
        if out.is_dir():  # not where the output folder itself could not be made
            try:
                path = _write_record(out, record)
            except OSError as err:
                log.error("cannot write the run record into %s: %s", out / RUNS_DIR, err)
        return RunOutcome(run_id, code, EXIT_CODES[code], message, path,
                          list(record.get("failed_tiles", [])), record)

    from mim_model.output_paths import make_output_dir  # here: importing mim_model imports torch

    try:
        make_output_dir(out, f"{spec.source}: output", InputError)
    except InputError as err:
        log.info("%s", err)  # the caller prints the one-line outcome
        return finish(EXIT_BAD_INPUT, str(err))
    try:
        with output_lock(out, run_id):
            code, message, extra = _run_locked(spec, run_id, record)
    except LockedError as err:
        log.info("%s", err)  # the caller prints the one-line outcome; log files keep it
        return finish(EXIT_LOCKED, str(err))
    return finish(code, message, **extra)


def _run_locked(
    spec: JobSpec, run_id: str, record: dict[str, Any]
) -> tuple[int, str, dict[str, Any]]:
    """Scan and post-process; (exit code, one-line message, extra record fields)."""
    from mim_model.errors import MiMError  # here: importing mim_model imports torch

    try:
        inputs = expand_inputs(spec)
        record["inputs"] = inputs
        log.info("run %s of job %s: %d scene(s) -> %s", run_id, spec.name, len(inputs), spec.output)
        from pipeline.runner import run_scans

        results = run_scans(
            inputs, spec.output, spec.config, resume=not spec.config.overwrite, run_id=run_id,
            overviews=spec.overviews, statistics=spec.statistics,
        )
    except (IrscanError, MiMError) as err:
        message = job_key_message(spec.source, err)  # a setting's job key, as `irscan plan` names it
        log.info("%s", message)  # the caller prints the one-line outcome; log files keep it
        return EXIT_BAD_INPUT, message, {}
    except Exception as err:
        log.exception("run %s: unexpected error", run_id)
        return EXIT_ERROR, f"unexpected error: {type(err).__name__}: {err}", {}

    totals = {k: 0 for k in ("total", "done", "skipped", "failed", "resumed")}
    scenes = []
    failed: list[str] = []
    for r in results:
        for key in totals:
            totals[key] += int(r.tiles.get(key, 0))
        scenes.append({"scene": r.scene, "out_dir": str(r.out_dir), "tiles": dict(r.tiles),
                       "detections": r.detections})
        failed.extend(f"{r.scene}/{t['tile']}: {t.get('error', '')}" for t in r.failed_tiles)
    detections = sum(r.detections for r in results)
    mpx = sum(float(r.report.get("mpx", 0.0)) for r in results)
    summary = (
        f"run {run_id}: {len(results)} scene(s), {mpx:.1f} Mpx, {totals['total']} tiles"
        f" ({totals['resumed']} resumed, {totals['skipped']} skipped, {totals['failed']} failed),"
        f" {detections} detections -> {spec.output}"
    )
    code = EXIT_FAILED_TILES if failed else EXIT_OK
    if failed:
        names = ", ".join(f.split(":")[0] for f in failed[:10])
        summary += f"; {len(failed)} tile(s) failed: {names}" + (" ..." if len(failed) > 10 else "")
    extra = {"scenes": scenes, "tiles": totals, "detections": detections, "mpx": round(mpx, 3),
             "failed_tiles": failed}
    return code, summary, extra


def execute_job_file(
    job_file: str | os.PathLike[str], *, run_id: str | None = None, overwrite: bool = False
) -> RunOutcome:
    """Load ``job_file`` and :func:`run_job` it; a bad job file gives exit code 2 (no record).

    Returns
    -------
    RunOutcome
    """
    rid = run_id or make_run_id()
    try:
        check_run_id(rid)
        spec = load_job(job_file)
        if overwrite:
            spec = spec.with_overwrite(True)
    except IrscanError as err:
        log.info("%s", err)  # the caller prints the one-line outcome; log files keep it
        return RunOutcome(rid, EXIT_BAD_INPUT, EXIT_CODES[EXIT_BAD_INPUT], str(err))
    return run_job(spec, run_id=rid)
