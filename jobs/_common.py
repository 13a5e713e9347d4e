"""Shared argument parsing and logging for the job entry points."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.jobrun import EXIT_CODES

EPILOG = "exit codes: " + ", ".join(f"{code} {name}" for code, name in EXIT_CODES.items())


def parser(prog: str, description: str, *, log_dir_required: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=EPILOG)
    p.add_argument("job_file", type=Path, help="YAML job file")
    p.add_argument("--log-dir", type=Path, required=log_dir_required,
                   help="write the run's log to LOG_DIR/<run id>.log")
    p.add_argument("--run-id", default=None, help="run id [UTC timestamp + random]")
    p.add_argument("--overwrite", action="store_true", help="replace outputs instead of resuming")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; a usage error exits 2 (argparse's own code, = bad input)."""
    return p.parse_args(list(argv) if argv is not None else sys.argv[1:])


def configure_logging(verbose: bool, *, to_stderr: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if to_stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
