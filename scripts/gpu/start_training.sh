#!/usr/bin/env bash
# Start a training run in the background on a lent GPU machine (after
# scripts/gpu/setup_device.sh). It outlives the command (setsid); poll /root/train/train.log.
# At the end it exports best.pt (chosen on val) to /root/train/export/ with a card that also
# reports the test split (for the card only: nothing is chosen on test).
#   bash scripts/gpu/start_training.sh MINUTES [irscan-train options...]
# Run 3, the packaged weights until run 8 (H200, 16 min; docs/benchmarks.md): fine-tuning with synthetic
# crops on procedural land clutter and two Landsat thermal crops carried in .gpu/data:
#   G=/root/data/geo-ir-samples
#   bash scripts/gpu/start_training.sh 16 --init-weights mim_model/weights/mim_sirst.safetensors \
#     --crop-px 512 --batch-size 16 --lr 5e-4 --warmup-epochs 1 --epochs 200 --eval-every 4 \
#     --p-synthetic 0.35 --p-clutter 0.6 \
#     --synthetic-background $G/landsat8_LC80200392015216LGN00_crop/l8_B10.tif \
#     --synthetic-background $G/landsat5_LT52240631988227CUB02_crop/LT52240631988227CUB02_B6.TIF
# Add --land-val-crops 64 to log a land score at each evaluation, --ema-decay 0.998 to choose
# among moving averages of the weights. A run longer than one machine's lease: once its
# budget has stopped it, bash scripts/gpu/save_run.sh sends it home in two calls (4 pieces a
# call; copy $OUT's files to .gpu/ckpt/); on the next machine setup_device.sh restores it and
# the same command resumes it. NO_EXPORT=1 skips the export (and its test report) for a part
# of a run that will be resumed; REPORT_SPLIT= (empty) exports without the test report (when
# several candidates are exported and one will be chosen on val). NPROC=4 trains on 4 GPUs of
# one machine (torchrun; the same recipe: --batch-size is the crops of one step over all GPUs;
# --num-workers is per GPU). The packaged weights (run 8) came from run 3's recipe refit on
# train + val: the command is in mim_model/weights/mim_sirst.md.
# Run 6 (docs/benchmarks.md), from scratch, resumed so:
#   NO_EXPORT=1 bash scripts/gpu/start_training.sh 23 --crop-px 512 --batch-size 16 --lr 2e-3 \
#     --warmup-epochs 10 --epochs 800 --eval-every 10 --num-workers 14 --ema-decay 0.999 \
#     --no-ema-warmup --p-synthetic 0.35 --p-clutter 0.6 --land-val-crops 64 \
#     --synthetic-background ... --synthetic-background ...      (the two above)
# Several independent runs on one machine of several GPUs (device time counts per machine,
# not per GPU): give each its own RUN_NAME and GPU, and --num-workers of about cores/runs - 1:
#   RUN_NAME=a CUDA_VISIBLE_DEVICES=0 bash scripts/gpu/start_training.sh 20 ... --num-workers 7
#   RUN_NAME=b CUDA_VISIBLE_DEVICES=1 bash scripts/gpu/start_training.sh 20 ... --num-workers 7
# Run NAME writes /root/train/NAME/, its log /root/train/NAME.log, its export
# /root/train/NAME-export/ and runs a copy of the code in /root/train/code-NAME/; without
# RUN_NAME: /root/train/run/, train.log, export/ and code/.
# Before the wheels are staged there is no rasterio on the machine: backgrounds PIL cannot
# read (float64 TIFFs) fail then.
set -euo pipefail
minutes=${1:?minutes}; shift
name=${RUN_NAME:-}
root=${TRAIN_ROOT:-/root/train}    # overridable for tests
data=${SIRST_DIR:-/root/data/sirst}
out=$root/${name:-run}
log=$root/train.log
[ -n "$name" ] && log=$root/$name.log
export_dir=$root/${name:+$name-}export
code=$root/code${name:+-$name}
mkdir -p "$root"
export PYTHONPATH=/root/site:$code PYTHONUNBUFFERED=1
rm -rf "$code" && cp -r "$PWD" "$code"   # the checkout may be replaced by the next call
cd "$code"
report_split=${REPORT_SPLIT-test}     # REPORT_SPLIT= : export without evaluating any split
export_args=(--export "$export_dir/mim_sirst.safetensors" ${report_split:+--report-split "$report_split"})
[ "${NO_EXPORT:-0}" = 1 ] && export_args=()
python=${PYTHON:-python3}
launcher=("$python" -m pipeline.cli.main)
if [ "${NPROC:-1}" -gt 1 ]; then  # data-parallel over NPROC GPUs: --batch-size is split over them
  launcher=("$python" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m pipeline.cli.main)
fi
setsid nohup "${launcher[@]}" -v train "$data" --out "$out" \
  --time-budget-min "$minutes" "${export_args[@]}" "$@" \
  >"$log" 2>&1 < /dev/null &
echo "training ${name:-run} started (pid $!), budget $minutes min, log $log"
