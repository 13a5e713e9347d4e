"""Print the whole-model GPU checks as JSON (run on a CUDA machine with mamba_ssm).

    PYTHONPATH=.:/root/site python3 scripts/gpu_check_model.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mim_model import gpu_checks  # noqa: E402

if __name__ == "__main__":
    report = {
        "device": __import__("torch").cuda.get_device_name(),
        "golden_cuda_scan": gpu_checks.golden_on_gpu("cuda"),
        "golden_chunked_scan_on_gpu": gpu_checks.golden_on_gpu("chunked"),
        "cuda_vs_reference_model": gpu_checks.cuda_vs_reference_model(),
        "bf16_vs_fp32_sirst": gpu_checks.bf16_vs_fp32_on_sirst(),
    }
    print(json.dumps(report, indent=2))
