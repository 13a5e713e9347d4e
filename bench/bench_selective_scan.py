"""Time every available selective-scan backend on the scans MiM-ISTD runs for one input.

MiM's scans at 512x512, batch 1 (spec 2.2-2.4): u is (batch, 4*d_inner, L) with K=4 scan
directions, B/C grouped (batch, 4, 16, L), d_state 16, delta_bias and softplus on, z None.

- outer stage s=1..4: batch 1, d_inner 64/128/256/512, L 4096/1024/256/64, two blocks each;
- inner stage s=1..4 (block 0 only): batch 4096/1024/256/64 sentences, d_inner 8/16/32/64,
  L 16 words.

The total over those 12 scans is what one forward pass of the network spends in scans.
Each backend is timed as the median (and min) of ``--repeats`` runs under
``torch.inference_mode()``; its output is compared with the reference (relative L2).

Usage::

    python bench/bench_selective_scan.py [--threads 2] [--repeats 10] [--side 512]
        [--batch 1] [--backends chunked,ref] [--ref-repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mim_model.ops import scan_backends, selective_scan  # noqa: E402

N_STATE = 16
K_DIRECTIONS = 4


def mim_scan_shapes(side: int = 512, batch: int = 1) -> list[dict[str, Any]]:
    """The (name, batch, dim, L, count) of every selective scan of one MiM forward pass."""
    shapes = []
    grid = side // 8  # sentence grid side at stage 1
    for s in range(4):
        d_inner = 64 * 2**s
        length = (grid // 2**s) ** 2
        shapes.append(
            dict(name=f"outer{s + 1}", batch=batch, dim=K_DIRECTIONS * d_inner, L=length, count=2)
        )
    for s in range(4):
        d_inner = 8 * 2**s
        n_sentences = (grid // 2**s) ** 2
        shapes.append(
            dict(name=f"inner{s + 1}", batch=batch * n_sentences, dim=K_DIRECTIONS * d_inner, L=16, count=1)
        )
    return shapes


def make_inputs(batch: int, dim: int, length: int, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """MiM-like scan inputs: A = -exp(A_log) with A_log = log(1..16), dt-bias as initialised."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=0.5 * torch.randn(batch, dim, length, generator=g),
        A=-torch.arange(1, N_STATE + 1, dtype=torch.float32).expand(dim, N_STATE).contiguous(),
        B=torch.randn(batch, K_DIRECTIONS, N_STATE, length, generator=g),
        C=torch.randn(batch, K_DIRECTIONS, N_STATE, length, generator=g),
        D=torch.ones(dim),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )
    out: dict[str, Any] = {k: v.to(device) for k, v in inputs.items()}
    out["delta_softplus"] = True
    return out


def time_call(fn: Callable[[], torch.Tensor], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per backend and shape")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed runs of the slow reference")
    parser.add_argument("--side", type=int, default=512, help="input side in pixels (multiple of 64)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument("--backends", default="", help="comma list (default: every available one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    available = {name: info for name, info in scan_backends().items() if name != "auto"}
    names = [n for n in args.backends.split(",") if n] or [n for n, i in available.items() if i.available]
    if "cuda" in names:
        names.remove("cuda")  # CPU benchmark; the CUDA kernel is timed by scripts/gpu_check_scan.py
    shapes = mim_scan_shapes(args.side, args.batch)
    results: dict[str, Any] = {
        "threads": args.threads,
        "side": args.side,
        "batch": args.batch,
        "torch": torch.__version__,
        "backends": {n: {"available": i.available, "detail": i.detail} for n, i in available.items()},
        "shapes": [],
    }
    totals = {n: 0.0 for n in names}
    for shape in shapes:
        x = make_inputs(shape["batch"], shape["dim"], shape["L"])
        row: dict[str, Any] = dict(shape)
        row["state_values"] = shape["batch"] * shape["dim"] * shape["L"] * N_STATE
        reference = None
        with torch.inference_mode():
            for name in names:
                repeats = args.ref_repeats if name == "ref" else args.repeats
                times = time_call(lambda name=name, x=x: selective_scan(**x, backend=name), repeats)
                out = selective_scan(**x, backend=name)
                if name == "ref":
                    reference = out
                row[name] = {
                    "median_ms": 1e3 * statistics.median(times),
                    "min_ms": 1e3 * min(times),
                    "output": out,
                }
                totals[name] += shape["count"] * statistics.median(times)
        for name in names:
            out = row[name].pop("output")
            if reference is not None and name != "ref":
                row[name]["rel_l2_vs_ref"] = float((out - reference).norm() / reference.norm())
        results["shapes"].append(row)
    results["total_ms"] = {n: 1e3 * t for n, t in totals.items()}

    header = f"{'scan':<8}{'batch':>6}{'dim':>6}{'L':>6}{'x':>3}" + "".join(
        f"{n + ' ms':>14}" for n in names
    )
    print(f"MiM selective scans at {args.side}^2, batch {args.batch}, {args.threads} threads "
          f"(median of {args.repeats}; ref {args.ref_repeats})")
    print(header)
    for row in results["shapes"]:
        cells = "".join(f"{row[n]['median_ms']:>14.2f}" for n in names)
        print(f"{row['name']:<8}{row['batch']:>6}{row['dim']:>6}{row['L']:>6}{row['count']:>3}{cells}")
    print(f"{'total (x count)':<29}" + "".join(f"{results['total_ms'][n]:>14.1f}" for n in names))
    errors = [
        row[n]["rel_l2_vs_ref"] for row in results["shapes"] for n in names if "rel_l2_vs_ref" in row[n]
    ]
    if errors:
        print(f"worst relative L2 error vs ref: {max(errors):.2e}")
    text = json.dumps(results, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    return results


if __name__ == "__main__":
    main()
