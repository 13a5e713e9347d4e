#!/usr/bin/env bash
# Install irscan (CPU torch wheel first) and scan the bundled sample scene on a local Ray.
# Uses the GPU when torch sees one. Outputs land in out/sample_scene/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
irscan scan data/sample/sample_scene.tif --out out --overwrite "$@"
echo "outputs: $(ls out/sample_scene | tr '\n' ' ')"
