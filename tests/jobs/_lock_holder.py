"""Test helper process: ``python -m tests.jobs._lock_holder OUT RUN_ID`` takes the output lock,
prints ``locked <pid>`` and holds it until stdin closes (or it is killed)."""

from __future__ import annotations

import sys

from pipeline.errors import LockedError
from pipeline.lock import output_lock


def main() -> int:
    out, run_id = sys.argv[1], sys.argv[2]
    try:
        with output_lock(out, run_id):
            print("locked", flush=True)
            sys.stdin.read()  # until the test closes our stdin
    except LockedError as err:
        print(f"refused {err}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
