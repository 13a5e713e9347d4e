"""Print the whole-model GPU checks as JSON lines (run on a CUDA machine with mamba_ssm).

    PYTHONPATH=.:/root/site IRSCAN_SIRST_DIR=.gpu/sirst python3 scripts/gpu_check_model.py

Each check prints its own JSON line as soon as it is done, so a later failure does not
lose the earlier numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.mim_model import gpu_checks  # noqa: E402

CHECKS = {
    "golden_cuda_scan": lambda: gpu_checks.golden_on_gpu("cuda"),
    "golden_chunked_scan_on_gpu": lambda: gpu_checks.golden_on_gpu("chunked"),
    "cuda_vs_reference_model": gpu_checks.cuda_vs_reference_model,
    "bf16_vs_fp32_sirst": gpu_checks.bf16_vs_fp32_on_sirst,
}

if __name__ == "__main__":
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    failed = 0
    for name, check in CHECKS.items():
        try:
            print(json.dumps({name: check()}), flush=True)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            failed += 1
            print(json.dumps({name: {"error": f"{type(exc).__name__}: {exc}"}}), flush=True)
    raise SystemExit(1 if failed else 0)
