#!/usr/bin/env bash
# Start a fine-tuning run of the packaged weights in the background on a lent GPU machine
# (after scripts/gpu/setup_device.sh). It outlives the command (setsid); poll /root/ft/train.log.
# At the end it exports best.pt (chosen on val) to /root/ft/export/ with a card that also
# reports the test split (for the card only: nothing is chosen on test).
#   bash scripts/gpu/start_finetune.sh [MINUTES] [extra irscan-train options...]
set -euo pipefail
minutes=${1:-12}; shift || true
mkdir -p /root/ft
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1
cp -r "$PWD" /root/ft/code 2>/dev/null || true   # the checkout may be replaced by the next call
cd /root/ft/code
setsid nohup python3 -c 'from pipeline.cli.main import cli; cli()' -v train /root/data/sirst --out /root/ft/run \
  --init-weights mim_model/weights/mim_sirst.safetensors --time-budget-min "$minutes" \
  --export /root/ft/export/mim_sirst.safetensors --report-split test "$@" \
  >/root/ft/train.log 2>&1 < /dev/null &
echo "fine-tuning started (pid $!), budget $minutes min"
