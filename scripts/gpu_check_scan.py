"""GPU check of the selective scan: mamba_ssm's CUDA kernel vs the reference, and timings.

For every scan of one MiM-ISTD forward pass at 512x512 (batch 1 and batch 8; see
bench/bench_selective_scan.py for the shapes), in float32:

- accuracy: CUDA kernel vs ``selective_scan_ref`` (both on the GPU): max abs and relative L2
  error of the output and of the gradients of u, delta, A, B, C, D, delta_bias (for a fixed
  random upstream gradient); the same for the chunked pure-PyTorch backend on CUDA tensors;
- speed: forward (inference_mode) and forward+backward of the ``cuda`` and ``chunked``
  backends, timed with CUDA events, median of ``--repeats`` runs.

Prints one JSON document on stdout (progress goes to stderr). Needs only torch, mamba_ssm
and this repository on PYTHONPATH::

    PYTHONPATH=. python scripts/gpu_check_scan.py [--repeats 20] [--batches 1,8] [--out f.json]
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

from mim_model.ops import scan_backends, selective_scan, selective_scan_ref  # noqa: E402

N_STATE = 16
K_DIRECTIONS = 4
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def mim_scan_shapes(side: int, batch: int) -> list[dict[str, Any]]:
    """Every selective scan of one MiM forward pass: name, batch, dim, L, count."""
    grid = side // 8
    shapes = []
    for s in range(4):
        shapes.append(dict(name=f"outer{s + 1}", batch=batch, dim=K_DIRECTIONS * 64 * 2**s,
                           L=(grid // 2**s) ** 2, count=2))
    for s in range(4):
        shapes.append(dict(name=f"inner{s + 1}", batch=batch * (grid // 2**s) ** 2,
                           dim=K_DIRECTIONS * 8 * 2**s, L=16, count=1))
    return shapes


def make_inputs(batch: int, dim: int, length: int, device: str, seed: int = 0) -> dict[str, Any]:
    """MiM-like float32 inputs (A = -exp(A_log), dt bias as initialised, grouped B/C)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    a_log = torch.log(torch.arange(1, N_STATE + 1, dtype=torch.float32)).expand(dim, N_STATE)
    x = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=0.5 * torch.randn(batch, dim, length, generator=g),
        A=-torch.exp(a_log + 0.1 * torch.randn(dim, N_STATE, generator=g)),
        B=torch.randn(batch, K_DIRECTIONS, N_STATE, length, generator=g),
        C=torch.randn(batch, K_DIRECTIONS, N_STATE, length, generator=g),
        D=torch.randn(dim, generator=g),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )
    out: dict[str, Any] = {k: v.to(device) for k, v in x.items()}
    out["delta_softplus"] = True
    return out


def run_with_grads(
    fn: Callable[..., torch.Tensor], x: dict[str, Any], weight: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and the gradients of GRAD_NAMES for the loss sum(out * weight)."""
    leaves = {k: x[k].detach().clone().requires_grad_() for k in GRAD_NAMES}
    out = fn(**{**x, **leaves})
    (out * weight).sum().backward()
    grads = {k: v.grad.detach() for k, v in leaves.items() if v.grad is not None}
    return out.detach(), grads


def errors(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max abs and relative L2 error (float64)."""
    diff = (got.double() - ref.double())
    return {
        "max_abs": float(diff.abs().max()),
        "rel_l2": float(diff.norm() / ref.double().norm().clamp_min(1e-300)),
    }


def time_ms(fn: Callable[[], Any], repeats: int, device: str) -> dict[str, float]:
    """Median and min in ms (CUDA events on a GPU), after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:  # --device cpu: a dry run of this script without a GPU
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def check_backend(
    name: str,
    x: dict[str, Any],
    weight: torch.Tensor,
    y_ref: torch.Tensor,
    g_ref: dict[str, torch.Tensor],
    repeats: int,
    device: str,
) -> dict[str, Any]:
    """Errors vs the reference and timings of one backend on one set of inputs."""

    def scan(**kw: Any) -> torch.Tensor:  # noqa: ANN401
        out: torch.Tensor = selective_scan(**kw, backend=name)
        return out

    y, grads = run_with_grads(scan, x, weight)
    result: dict[str, Any] = {"output": errors(y, y_ref)}
    result["grads"] = {k: errors(grads[k], g_ref[k]) for k in g_ref}
    result["worst_grad_rel_l2"] = max(v["rel_l2"] for v in result["grads"].values())
    with torch.inference_mode():
        result["forward"] = time_ms(lambda: scan(**x), repeats, device)
    leaves = {k: x[k].detach().clone().requires_grad_() for k in GRAD_NAMES}

    def fwd_bwd() -> None:
        (scan(**{**x, **leaves}) * weight).sum().backward()
        for v in leaves.values():
            v.grad = None

    result["forward_backward"] = time_ms(fwd_bwd, max(3, repeats // 2), device)
    return result


def check_shape(shape: dict[str, Any], backends: list[str], repeats: int, device: str) -> dict[str, Any]:
    """Accuracy vs the reference and timings of each backend on one scan shape."""
    x = make_inputs(shape["batch"], shape["dim"], shape["L"], device)
    weight = torch.randn(shape["batch"], shape["dim"], shape["L"], device=device)
    row: dict[str, Any] = dict(shape)
    y_ref, g_ref = run_with_grads(selective_scan_ref, x, weight)
    for name in backends:
        row[name] = check_backend(name, x, weight, y_ref, g_ref, repeats, device)
        print(f"{shape['name']} batch {shape['batch']}: {name} y rel L2 {row[name]['output']['rel_l2']:.2e}, "
              f"worst grad {row[name]['worst_grad_rel_l2']:.2e}, "
              f"fwd {row[name]['forward']['median_ms']:.3f} ms", file=sys.stderr, flush=True)
    del x, weight, y_ref, g_ref
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per backend and shape")
    parser.add_argument("--batches", default="1,8", help="comma list of images per forward pass")
    parser.add_argument("--side", type=int, default=512, help="input side in pixels")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: dry run of the script (chunked only, small --side) without a GPU")
    args = parser.parse_args(argv)

    report = {n: {"available": i.available, "detail": i.detail} for n, i in scan_backends().items()}
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "backends": report,
    }
    if args.device == "cuda" and not torch.cuda.is_available():
        result["error"] = "no CUDA device"
        print(json.dumps(result, indent=1))
        return result
    result["device"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    try:
        import mamba_ssm  # noqa: F401 -- version only; the scan goes through mim_model.ops

        result["mamba_ssm"] = getattr(mamba_ssm, "__version__", "unknown")
    except ImportError as err:
        result["mamba_ssm"] = f"not importable: {err}"
    backends = ["cuda", "chunked"] if report["cuda"]["available"] and args.device == "cuda" else ["chunked"]
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity: no TF32 in the chunked mv
    result["runs"] = []
    for batch in (int(b) for b in args.batches.split(",") if b):
        shapes = []
        totals = {n: 0.0 for n in backends}
        for shape in mim_scan_shapes(args.side, batch):
            try:
                row = check_shape(shape, backends, args.repeats, args.device)
            except torch.cuda.OutOfMemoryError as err:
                row = dict(shape, error=f"out of memory: {err}")
                torch.cuda.empty_cache()
            shapes.append(row)
            for n in backends:
                if n in row:
                    totals[n] += shape["count"] * row[n]["forward"]["median_ms"]
        worst = {
            n: {
                "output_rel_l2": max((r[n]["output"]["rel_l2"] for r in shapes if n in r), default=None),
                "grad_rel_l2": max((r[n]["worst_grad_rel_l2"] for r in shapes if n in r), default=None),
            }
            for n in backends
        }
        result["runs"].append(
            {"batch": batch, "side": args.side, "shapes": shapes, "forward_total_ms": totals, "worst": worst}
        )
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
