#!/usr/bin/env bash
# Send a training run home through $OUT so that a later machine can resume it: run on the
# lent GPU machine after (or while) scripts/gpu/start_training.sh runs.
#   bash scripts/gpu/save_run.sh [RUN_DIR]          (default /root/train/run)
# Writes to $OUT: run.tar (last.pt, best.pt, metrics.jsonl) cut in pieces just under 16 MiB
# (run.tar.piece-NN) and run.sha256. $OUT brings back at most 8 files of 16 MiB: 7 pieces
# hold 117 MB, enough for this model's run (last.pt about 79 MB with the weight average,
# best.pt 20 MB). Copy the files to .gpu/ckpt/ here; scripts/gpu/setup_device.sh puts the
# run back together on the next machine once every piece has been carried (over one or
# more calls: the carry limit is 64 MiB a call, tree included).
set -euo pipefail
run=${1:-/root/train/run}
: "${OUT:?OUT is not set: run this on the device machine}"
piece_bytes=$((16 * 1024 * 1024 - 4096))
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
names=()
for name in last.pt best.pt metrics.jsonl; do
  # a consistent copy: the trainer replaces these files atomically
  [ -f "$run/$name" ] && cp "$run/$name" "$stage/$name" && names+=("$name")
done
[ ${#names[@]} -gt 0 ] || { echo "save_run: $run holds no last.pt, best.pt or metrics.jsonl" >&2; exit 1; }
tar -C "$stage" -cf "$stage/run.tar" "${names[@]}"
pieces=$(( ($(stat -c %s "$stage/run.tar") + piece_bytes - 1) / piece_bytes ))
if [ "$pieces" -gt 7 ]; then
  echo "save_run: run.tar needs $pieces pieces, \$OUT brings back 7 and run.sha256" >&2
  exit 1
fi
(cd "$stage" && sha256sum run.tar) > "$OUT/run.sha256"
split -b "$piece_bytes" -d -a 2 "$stage/run.tar" "$OUT/run.tar.piece-"
ls -la "$OUT"
