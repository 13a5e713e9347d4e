#!/usr/bin/env bash
# Prepare a bare GPU machine of the device tool (no package index) for irscan.
# Run from the repo root there, with the carried folders:
#   .gpu/mamba        copy of ../shared/gpu (mamba_ssm sdist + build script), or
#   .gpu/mambawhl     a mamba_ssm wheel built on an earlier machine, cut in pieces of < 16 MiB
#                     (to come back through $OUT) with its mamba.sha256: installed, not rebuilt
#   .gpu/sirst        copy of ../shared/data/sirst (training and the bf16 check only)
#   .gpu/data         shared data needed by benchmarks (the Sentinel-2 B12 crop)
#   .gpustage/part-N  one wheel part per call (../shared/gpu/stage-wheels.py); .gpu/stage-meta
#                     holds its assemble.sh, SHA256SUMS and PARTS (the number of parts)
#   .gpu/ckpt         a training run sent home by scripts/gpu/save_run.sh (run.sha256 and
#                     the pieces of run.tar, over one or more calls): resumed there
# Everything lands under /root, which survives between commands while the machine is held:
#   /root/site   mamba_ssm and the staged wheels (export PYTHONPATH=/root/site:$PWD)
#   /root/data   data copied from the carried folders
# GPU tests before the wheels are staged (no rasterio there):
#   python3 -m pytest -m gpu --noconftest tests/mim_model
set -euo pipefail
mkdir -p /root/site /root/stage /root/data
# selective_scan_cuda links against libtorch: import torch first
if ! PYTHONPATH=/root/site python3 -c "import torch, selective_scan_cuda" 2>/dev/null && [ -f .gpu/mambawhl/mamba.sha256 ]; then
  whl=$(awk '{print $2}' .gpu/mambawhl/mamba.sha256)
  cat .gpu/mambawhl/"$whl".piece-* > "/root/$whl"
  (cd /root && sha256sum -c "$OLDPWD/.gpu/mambawhl/mamba.sha256")
  python3 -m pip install -q --no-deps --no-index --target /root/site "/root/$whl"
  echo "mamba_ssm installed from the prebuilt wheel $whl"
fi
if ! PYTHONPATH=/root/site python3 -c "import torch, selective_scan_cuda" 2>/dev/null; then
  start=$(date +%s)
  if ! bash .gpu/mamba/build-mamba-ssm.sh /root/wheels >/root/mamba-build.log 2>&1; then
    tail -40 /root/mamba-build.log
    exit 1
  fi
  python3 -m pip install -q --no-deps --no-index --target /root/site /root/wheels/mamba_ssm-*.whl
  echo "mamba_ssm built and installed in $(( $(date +%s) - start )) s"
fi
if [ -d .gpu/sirst ] && [ ! -d /root/data/sirst ]; then cp -r .gpu/sirst /root/data/sirst; fi
if [ -d .gpu/data ]; then cp -r --update=none .gpu/data/. /root/data/; fi
for part in .gpustage/part-*; do
  [ -d "$part" ] || continue
  cp --update=none "$part"/* /root/stage/
  touch "/root/stage/.got-$(basename "$part")"
done
if [ -f .gpu/stage-meta/PARTS ] && [ ! -f /root/site/.wheels-installed ]; then
  cp .gpu/stage-meta/assemble.sh .gpu/stage-meta/SHA256SUMS /root/stage/
  got=$(ls /root/stage/.got-part-* 2>/dev/null | wc -l)
  if [ "$got" -eq "$(cat .gpu/stage-meta/PARTS)" ]; then
    (cd /root/stage && bash assemble.sh /root/stage /root/site) && touch /root/site/.wheels-installed
  else
    echo "wheel parts: $got of $(cat .gpu/stage-meta/PARTS) staged"
  fi
fi
# a training run sent home by scripts/gpu/save_run.sh: the pieces of run.tar in .gpu/ckpt,
# maybe over several calls; unpacked in /root/train/run (where start_training.sh resumes)
if [ -f .gpu/ckpt/run.sha256 ] && [ ! -f /root/train/.run-restored ]; then
  mkdir -p /root/ckpt /root/train/run
  cp .gpu/ckpt/run.sha256 /root/ckpt/
  for piece in .gpu/ckpt/run.tar.piece-*; do
    [ -f "$piece" ] && [ ! -e "/root/ckpt/$(basename "$piece")" ] && cp "$piece" /root/ckpt/
  done
  if (cd /root/ckpt && cat run.tar.piece-* > run.tar && sha256sum --quiet -c run.sha256) >/dev/null 2>&1; then
    tar -C /root/train/run -xf /root/ckpt/run.tar && rm /root/ckpt/run.tar
    touch /root/train/.run-restored
    echo "training run restored to /root/train/run: $(ls /root/train/run | tr '\n' ' ')"
  else
    echo "training run: $(ls /root/ckpt | grep -c piece) pieces of run.tar carried so far"
  fi
fi
PYTHONPATH=/root/site python3 -c "import torch, selective_scan_cuda, mamba_ssm; print('mamba_ssm', mamba_ssm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
