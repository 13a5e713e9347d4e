#!/usr/bin/env bash
# Start a training run in the background on a lent GPU machine (after
# scripts/gpu/setup_device.sh). It outlives the command (setsid); poll /root/train/train.log.
# At the end it exports best.pt (chosen on val) to /root/train/export/ with a card that also
# reports the test split (for the card only: nothing is chosen on test).
#   bash scripts/gpu/start_training.sh MINUTES [irscan-train options...]
# This session's fine-tuning (docs/benchmarks.md, run 2):
#   bash scripts/gpu/start_training.sh 12 --init-weights mim_model/weights/mim_sirst.safetensors \
#     --crop-px 512 --batch-size 16 --lr 1e-3 --warmup-epochs 2 --epochs 120 --eval-every 5
# With synthetic crops on the Landsat backgrounds carried in .gpu/data (copied to /root/data):
#   bash scripts/gpu/start_training.sh 25 --p-synthetic 0.3 \
#     --synthetic-background /root/data/geo-ir-samples/landsat8_LC80200392015216LGN00_crop/l8_B10.tif ...
set -euo pipefail
minutes=${1:?minutes}; shift
mkdir -p /root/train
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1
rm -rf /root/train/code && cp -r "$PWD" /root/train/code   # the checkout may be replaced by the next call
cd /root/train/code
setsid nohup python3 -c 'from pipeline.cli.main import cli; cli()' -v train /root/data/sirst --out /root/train/run \
  --time-budget-min "$minutes" --export /root/train/export/mim_sirst.safetensors --report-split test "$@" \
  >/root/train/train.log 2>&1 < /dev/null &
echo "training started (pid $!), budget $minutes min"
