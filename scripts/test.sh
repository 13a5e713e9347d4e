#!/usr/bin/env bash
# Install irscan with its test tools (CPU torch wheel first) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
set +e
python3 -m pytest -q "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure of the suite, say so.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
