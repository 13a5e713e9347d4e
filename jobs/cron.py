"""Cron wrapper: run a job file with a run id, a log file per run and documented exit codes.

Usage::

    python -m jobs.cron JOB.yaml --log-dir DIR [--run-id ID] [--overwrite] [-v]

Makes a run id (UTC timestamp + 6 random hex digits, e.g. ``20260101T020000Z-3fa2c1``), logs
to ``DIR/<run id>.log``, runs the job under the output lock (a run that finds the previous
one still going exits 3 at once; the lock of a run that was killed is taken over), resumes
tiles finished by an interrupted run, writes ``OUTPUT/_runs/<run id>.json`` and prints one
summary line (``irscan cron <run id>: <status>: <message>; log <path>``) to stdout, which
cron mails or appends.

Exit codes
----------
0  ok: every tile done (or skipped as all nodata)
1  failed_tiles: the run finished, some tiles failed after retries (listed in the record)
2  bad_input: bad job file, scene, option or output (also bad arguments, unwritable DIR)
3  locked: another run holds the output's lock (still running)
4  error: unexpected error; the traceback is in the log

Example crontab line (nightly at 02:15; ``RAY_ADDRESS`` joins a running cluster, leave it
out to start a local Ray on this machine)::

    15 2 * * * cd /srv/irscan && RAY_ADDRESS=auto /srv/irscan/.venv/bin/python -m jobs.cron jobs/nightly.yaml --log-dir /var/log/irscan >> /var/log/irscan/cron.out 2>&1
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from jobs._common import configure_logging, parse, parser
from pipeline.errors import IrscanError
from pipeline.jobrun import EXIT_BAD_INPUT, add_log_file, check_run_id, execute_job_file
from pipeline.lock import make_run_id

log = logging.getLogger("jobs.cron")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; return the exit code (see the module docstring)."""
    args = parse(parser("python -m jobs.cron", "Run an irscan job file from cron.",
                        log_dir_required=True), argv)
    configure_logging(args.verbose, to_stderr=False)
    try:
        run_id = check_run_id(args.run_id) if args.run_id else make_run_id()
        log_path = add_log_file(args.log_dir, run_id,
                                level=logging.DEBUG if args.verbose else logging.INFO)
    except (IrscanError, OSError) as err:
        print(f"irscan cron: bad_input: {err}", flush=True)
        return EXIT_BAD_INPUT
    log.info("cron run %s of %s", run_id, args.job_file)
    outcome = execute_job_file(args.job_file, run_id=run_id, overwrite=args.overwrite)
    log.info("cron run %s ended: exit %d (%s)", run_id, outcome.exit_code, outcome.status)
    print(f"irscan cron {run_id}: {outcome.status}: {outcome.message}; log {log_path}", flush=True)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
