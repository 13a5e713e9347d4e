"""``irscan run JOB.yaml``: run a job file; resumes finished work, holds the output lock.

Prints one summary line; writes ``OUTPUT/_runs/<run id>.json``. Exit status: 0 ok, 1 some
tiles failed (listed), 2 bad job file / input, 3 the output is locked by another run,
4 unexpected error (see :mod:`pipeline.jobrun`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace existing outputs instead of resuming.")
@click.option("--run-id", default=None, help="Run id for the record and log. [UTC time + random]")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also log to LOG_DIR/<run id>.log.")
def command(job_file: Path, overwrite: bool, run_id: str | None, log_dir: Path | None) -> None:
    """Run JOB_FILE (a YAML job): scan every input into the job's output folder."""
    from pipeline.jobrun import EXIT_OK, add_log_file, check_run_id, execute_job_file
    from pipeline.lock import make_run_id

    rid = check_run_id(run_id) if run_id else make_run_id()
    if log_dir is not None:
        add_log_file(log_dir, rid)
    outcome = execute_job_file(job_file, run_id=rid, overwrite=overwrite)
    if outcome.exit_code == EXIT_OK:
        click.echo(f"irscan: {outcome.message}")
        if outcome.record_path is not None:
            click.echo(f"irscan: run record {outcome.record_path}")
        return
    click.echo(f"irscan: {outcome.status}: {outcome.message}", err=True)
    for tile in outcome.failed_tiles[:50]:
        click.echo(f"  failed {tile}", err=True)
    if len(outcome.failed_tiles) > 50:
        click.echo(f"  ... and {len(outcome.failed_tiles) - 50} more (see {outcome.record_path})", err=True)
    sys.exit(outcome.exit_code)


__all__ = ["command"]
