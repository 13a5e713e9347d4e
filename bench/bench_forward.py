"""MiM forward-pass benchmark: median latency, Mpx/s and peak memory.

    python bench/bench_forward.py --device cpu --sizes 512 --threads 2
    python bench/bench_forward.py --device cuda --sizes 512 1024 2048 --batches 1 4 16 --dtypes fp32 bf16

CPU: peak RSS of the process (psutil). CUDA: peak allocated GPU memory per configuration
(torch.cuda.max_memory_allocated after reset), CUDA-synchronised wall time.
Prints one JSON object per configuration and a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import torch  # noqa: E402

from mim_model import MiM  # noqa: E402
from mim_model.ops import scan_backends  # noqa: E402


def _time_forward(model, x, dtype, repeats, warmup):
    device = x.device
    times = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=(dtype == "bf16"))
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--layout", default="spatial", choices=["official", "spatial"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--max-px", type=float, default=2.2e8, help="skip batch*side^2 above this")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = MiM(layout=args.layout).eval().to(device)
    process = psutil.Process(os.getpid())
    rows = []
    for dtype in args.dtypes:
        for side in args.sizes:
            for batch in args.batches:
                if batch * side * side > args.max_px:
                    continue
                x = torch.randn(batch, 3, side, side, device=device)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                try:
                    times = _time_forward(model, x, dtype, args.repeats, args.warmup)
                except torch.OutOfMemoryError:
                    print(json.dumps({"side_px": side, "batch": batch, "dtype": dtype, "error": "out of memory"}))
                    continue
                median_s = statistics.median(times)
                row = {
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads} threads",
                    "side_px": side,
                    "batch": batch,
                    "dtype": dtype,
                    "layout": args.layout,
                    "median_ms": round(median_s * 1e3, 2),
                    "min_ms": round(min(times) * 1e3, 2),
                    "ms_per_image": round(median_s * 1e3 / batch, 2),
                    "mpx_per_s": round(batch * side * side / median_s / 1e6, 2),
                }
                if device.type == "cuda":
                    row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                else:
                    row["peak_rss_mib"] = round(process.memory_info().rss / 2**20, 1)
                    try:
                        import resource

                        row["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
                    except ImportError:
                        pass
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("scan backends:", json.dumps(scan_backends(), default=str))
    print(f"{'dtype':5} {'side':>5} {'batch':>5} {'median ms':>10} {'ms/img':>8} {'Mpx/s':>8} {'mem':>8}")
    for r in rows:
        mem = r.get("peak_gpu_mem_gib", r.get("max_rss_mib"))
        print(f"{r['dtype']:5} {r['side_px']:5d} {r['batch']:5d} {r['median_ms']:10.2f} {r['ms_per_image']:8.2f} {r['mpx_per_s']:8.2f} {mem!s:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
