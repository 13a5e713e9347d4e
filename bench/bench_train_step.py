"""Time one MiM training step (forward + backward + AdamW step) on the available device.

    python bench/bench_train_step.py --crop-px 256 --batch-size 16 --steps 20
    python bench/bench_train_step.py --crop-px 256 --batch-size 16 --data ../shared/data/sirst

Prints one JSON line: median / min / max step time (ms) over ``--steps`` timed steps after
``--warmup`` untimed ones, crops per second, peak GPU memory, scan backend, device. With
``--data`` it also times the augmentation (crops per second in one process), which tells
how many DataLoader workers keep the GPU fed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mim_model import MiM  # noqa: E402
from mim_model.training.inference import autocast_for  # noqa: E402
from mim_model.training.loss import make_loss  # noqa: E402
from mim_model.training.preprocess import to_model_input  # noqa: E402
from mim_model.training.train import TrainConfig, _make_optimizer, resolve_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_step(args: argparse.Namespace) -> dict[str, object]:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = MiM(layout=args.layout).to(device).train()
    cfg = TrainConfig(data_dir=".", out_dir=".", crop_px=args.crop_px, batch_size=args.batch_size)
    optimizer = _make_optimizer(model, cfg)
    loss_fn = make_loss(args.loss)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    x = torch.rand(args.batch_size, 1, args.crop_px, args.crop_px, device=device)
    y = (torch.rand_like(x) > 0.995).float()
    times = []
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        with autocast_for(device, not args.no_amp):
            logits = model(to_model_input(x))
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    scan = _scan_backend(device)
    return {
        "bench": "train_step",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "scan": scan,
        "layout": args.layout,
        "crop_px": args.crop_px,
        "batch_size": args.batch_size,
        "amp_bf16": (not args.no_amp) and device.type == "cuda",
        "steps": args.steps,
        "median_ms": round(med * 1e3, 2),
        "min_ms": round(min(times) * 1e3, 2),
        "max_ms": round(max(times) * 1e3, 2),
        "crops_per_s": round(args.batch_size / med, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def _scan_backend(device: torch.device) -> str:
    """The selective-scan backend that ``auto`` picks for tensors on ``device``."""
    from mim_model.ops.selective_scan import resolve_backend

    return resolve_backend(None, device)


def bench_augment(args: argparse.Namespace) -> dict[str, object]:
    import numpy as np

    from mim_model.training.data import Augment, SirstSplit, augment_sample

    split = SirstSplit.load(args.data, "train")
    rng = np.random.default_rng(0)
    n = 200
    t0 = time.perf_counter()
    for i in range(n):
        augment_sample(split.images[i % len(split)], split.masks[i % len(split)], args.crop_px, Augment(), rng)
    dt = time.perf_counter() - t0
    return {"bench": "augment", "crop_px": args.crop_px, "crops_per_s_one_process": round(n / dt, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crop-px", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--layout", default="spatial", choices=["spatial", "official"])
    p.add_argument("--loss", default="softiou+bce")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--data", help="SIRST-layout data dir: also time the augmentation")
    args = p.parse_args()
    print(json.dumps(bench_step(args)))
    if args.data:
        print(json.dumps(bench_augment(args)))


if __name__ == "__main__":
    main()
