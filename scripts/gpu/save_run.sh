#!/usr/bin/env bash
# Send a training run home through $OUT so that a later machine can resume it: run on the
# lent GPU machine once the run has stopped (start_training.sh's budget).
#   bash scripts/gpu/save_run.sh [RUN_DIR] [FIRST_PIECE]     (default /root/train/run, 0)
# Packs RUN_DIR's last.pt, best.pt and metrics.jsonl into run.tar (byte-identical on every
# call while the files are unchanged), cuts it in pieces just under 16 MiB and writes
# run.sha256 and at most 4 pieces, from FIRST_PIECE on, to $OUT: $OUT brings back 64 MiB
# a call in all. A run with the weight average (about 99 MB, 6 pieces) takes two calls:
#   bash scripts/gpu/save_run.sh; ...; bash scripts/gpu/save_run.sh /root/train/run 4
# Copy the files to .gpu/ckpt/ here; scripts/gpu/setup_device.sh puts the run back together
# on the next machine once every piece has been carried (over one or more calls: the carry
# limit is 64 MiB a call, tree included).
set -euo pipefail
run=${1:-/root/train/run}
first=${2:-0}
: "${OUT:?OUT is not set: run this on the device machine}"
piece_bytes=$((16 * 1024 * 1024 - 4096))
per_call=4
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
names=()
for name in last.pt best.pt metrics.jsonl; do
  # a consistent copy: the trainer replaces these files atomically
  [ -f "$run/$name" ] && cp "$run/$name" "$stage/$name" && names+=("$name")
done
[ ${#names[@]} -gt 0 ] || { echo "save_run: $run holds no last.pt, best.pt or metrics.jsonl" >&2; exit 1; }
# fixed times, owners and order: the same files give the same tar on a later call
tar -C "$stage" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u+rw,go+r \
  -cf "$stage/run.tar" "${names[@]}"
mkdir "$stage/pieces"
split -b "$piece_bytes" -d -a 2 "$stage/run.tar" "$stage/pieces/run.tar.piece-"
total=$(ls "$stage/pieces" | wc -l)
if [ "$first" -ge "$total" ]; then
  echo "save_run: first piece $first: expected one of 0..$((total - 1)) (run.tar has $total pieces)" >&2
  exit 1
fi
(cd "$stage" && sha256sum run.tar) > "$OUT/run.sha256"
last=$(( first + per_call - 1 < total - 1 ? first + per_call - 1 : total - 1 ))
for i in $(seq "$first" "$last"); do
  cp "$stage/pieces/run.tar.piece-$(printf %02d "$i")" "$OUT/"
done
ls -la "$OUT"
if [ "$last" -lt "$((total - 1))" ]; then
  echo "save_run: pieces $first..$last of $total sent; next call: bash scripts/gpu/save_run.sh $run $((last + 1))"
else
  echo "save_run: pieces $first..$last of $total sent; run.tar complete"
fi
