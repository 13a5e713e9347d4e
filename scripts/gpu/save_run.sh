#!/usr/bin/env bash
# Send a training run home through $OUT (files of < 16 MiB) so that a later machine can
# resume it: run on the lent GPU machine after (or while) scripts/gpu/start_training.sh runs.
#   bash scripts/gpu/save_run.sh [RUN_DIR]          (default /root/train/run)
# Writes to $OUT: last.pt and best.pt cut in 15 MiB pieces (*.piece-NN), run.sha256 (the
# whole files' hashes) and metrics.jsonl: at most 8 files for a run of this model (last.pt
# about 59 MB with the weight average 79 MB, best.pt 20 MB). Copy them to .gpu/ckpt/ here;
# scripts/gpu/setup_device.sh puts them back together on the next machine once every piece
# listed in run.sha256 has been carried (they may come over several calls).
set -euo pipefail
run=${1:-/root/train/run}
: "${OUT:?OUT is not set: run this on the device machine}"
stage=$(mktemp -d)
for name in last.pt best.pt; do
  [ -f "$run/$name" ] || continue
  cp "$run/$name" "$stage/$name"   # a consistent copy: the trainer replaces these files atomically
  (cd "$stage" && sha256sum "$name") >> "$OUT/run.sha256"
  split -b 15M -d -a 2 "$stage/$name" "$OUT/$name.piece-"
done
[ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$OUT/"
rm -rf "$stage"
ls -la "$OUT"
