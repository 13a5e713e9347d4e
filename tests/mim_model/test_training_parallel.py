"""Data-parallel training (torchrun, several processes; here gloo on CPU).

The sampler's sharding is checked exactly (the processes together see at each step the
crops one process would), and so is the sharded loss's gradient (after the averaging of
DistributedDataParallel it is the whole batch's); a real two-process run on SIRST crops
trains, evaluates and writes once, resumes, and refuses a batch it cannot split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mim_model.training.data import EpochSampler

REPO = Path(__file__).resolve().parents[2]
needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def test_sampler_shards_give_each_step_the_single_process_batch() -> None:
    n, batch, world = 13, 4, 2  # 13 items: 3 whole batches, the 13th item dropped
    single = list(EpochSampler(n, seed=7, repeats=2))
    shards = [EpochSampler(n, seed=7, repeats=2, rank=r, world=world, batch_size=batch) for r in range(world)]
    for shard in shards:
        shard.set_epoch(0)
    per_rank = [list(s) for s in shards]
    assert all(len(items) == len(s) == (2 * n // batch) * (batch // world) for items, s in zip(per_rank, shards, strict=True))
    share = batch // world
    for step in range(2 * n // batch):
        together = [item for items in per_rank for item in items[step * share : (step + 1) * share]]
        assert together == single[step * batch : (step + 1) * batch]
    shards[0].set_epoch(1)
    assert list(shards[0]) != per_rank[0]  # a fresh order each epoch
    with pytest.raises(ValueError, match="batch_size: expected a multiple of the 2 processes, got 3"):
        EpochSampler(n, seed=7, rank=0, world=2, batch_size=3)


def _sharded_loss_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from mim_model.training.distributed import Workers
    from mim_model.training.loss import make_loss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        logits, target = _batch()
        share = logits.shape[0] // world
        mine = logits[rank * share : (rank + 1) * share].clone().requires_grad_(True)
        workers = Workers(rank=rank, world=world)
        loss = make_loss("softiou+bce", 0.5, reduce_sums=workers.sum_with_gradient)(
            mine, target[rank * share : (rank + 1) * share]
        )
        loss.backward()
        torch.save({"grad": mine.grad, "softiou_sums": workers.sum_with_gradient(torch.ones(2))},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 1, 8, 8, generator=gen) * 3
    target = (torch.rand(4, 1, 8, 8, generator=gen) > 0.8).float()
    return logits, target


@needs_gloo
def test_sharded_loss_gives_the_whole_batch_gradient_after_averaging(tmp_path: Path) -> None:
    from mim_model.training.loss import make_loss

    logits, target = _batch()
    whole = logits.clone().requires_grad_(True)
    make_loss("softiou+bce", 0.5)(whole, target).backward()
    world = 2
    torch.multiprocessing.spawn(_sharded_loss_worker, args=(world, str(tmp_path / "init"), str(tmp_path)),
                                nprocs=world, join=True)
    share = logits.shape[0] // world
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["softiou_sums"], torch.full((2,), float(world)))
        # DistributedDataParallel averages the processes' parameter gradients: 1 / world of
        # each process's gradient must be the whole-batch gradient of its share
        torch.testing.assert_close(got["grad"] / world, whole.grad[rank * share : (rank + 1) * share],
                                   rtol=1e-5, atol=1e-7)


def _torchrun(data: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "pipeline.cli.main", "-v", "train", str(data), "--out", str(out), "--crop-px", "64",
        "--num-workers", "0", "--eval-every", "2", "--device", "cpu", "--warmup-epochs", "0.5", *options,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


@needs_gloo
def test_two_processes_train_write_once_and_resume(tiny_sirst: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _torchrun(tiny_sirst, out, "--batch-size", "4", "--epochs", "2", "--ema-decay", "0.5")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count('"epochs_done"') == 1  # process 0 alone reports
    assert "device cpu x 2 processes" in first.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one line per epoch, not one per process
    assert records[1]["val"] is not None and (out / "best.pt").is_file()

    second = _torchrun(tiny_sirst, out, "--batch-size", "4", "--epochs", "3", "--ema-decay", "0.5")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["global_step"] == 3  # 4 crops a step: one step per epoch

    odd = _torchrun(tiny_sirst, tmp_path / "odd", "--batch-size", "3", "--epochs", "1")
    assert odd.returncode != 0
    assert "irscan: error: train config batch_size: expected a multiple of the 2 training processes, got 3" in odd.stderr


@needs_gloo
def test_two_processes_train_with_deep_supervision(tiny_sirst: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    run = _torchrun(tiny_sirst, out, "--batch-size", "4", "--epochs", "2", "--deep-supervision", "0.5")
    assert run.returncode == 0, run.stderr[-3000:]
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["config"]["deep_supervision"] == 0.5
    assert set(last["decoder_heads"]) == {"side3.weight", "side3.bias", "side2.weight", "side2.bias"}
    assert (out / "best.pt").is_file()
