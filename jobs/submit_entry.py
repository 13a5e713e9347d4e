"""Entry point for ``ray job submit``: run one job file on the cluster the job runs in.

Usage (from the repository root, with the cluster's dashboard forwarded to localhost, e.g.
``ray dashboard cluster.yaml``)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        -- python -m jobs.submit_entry jobs/examples/gpu_cluster.yaml

``ray job`` sets ``RAY_ADDRESS`` for the entry point, so the run joins that cluster (unless
the job file's ``scan.ray_address`` says otherwise). Logs go to stderr, which
``ray job logs`` shows. The job's ``output`` must be a folder that every node sees at the
same path (NFS/EFS/FSx), since the inference actors write the Zarr chunks themselves.

Exit codes: 0 ok, 1 some tiles failed, 2 bad job file/input, 3 output locked by another
run, 4 unexpected error (``ray job status`` reports non-zero as FAILED).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from jobs._common import configure_logging, parse, parser
from pipeline.errors import IrscanError
from pipeline.jobrun import EXIT_BAD_INPUT, add_log_file, check_run_id, execute_job_file
from pipeline.lock import make_run_id

log = logging.getLogger("jobs.submit_entry")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; return the exit code."""
    args = parse(parser("python -m jobs.submit_entry", "Run an irscan job file on a Ray cluster.",
                        log_dir_required=False), argv)
    configure_logging(args.verbose, to_stderr=True)
    try:
        run_id = check_run_id(args.run_id) if args.run_id else make_run_id()
        if args.log_dir is not None:
            add_log_file(args.log_dir, run_id)
    except (IrscanError, OSError) as err:
        print(f"irscan job: bad_input: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    outcome = execute_job_file(args.job_file, run_id=run_id, overwrite=args.overwrite)
    print(f"irscan job {outcome.run_id}: {outcome.status}: {outcome.message}", flush=True)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
