"""Data-parallel training over several processes (one per GPU), started by ``torchrun``.

``torchrun --standalone --nproc_per_node N -m pipeline.cli.main -v train ...`` starts N
copies of ``irscan train``; torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` and
:func:`start` joins them into one process group (NCCL on CUDA, gloo on CPU). The recipe
does not change with N: ``batch_size`` stays the crops of one optimiser step, split evenly
over the processes, and every step sees the same crops as a single process would (see
:class:`mim_model.training.data.EpochSampler`). The SoftIoU's sums run over the whole batch
(:meth:`Workers.sum_with_gradient`) and on CUDA batch norm statistics are synchronised, so a
step computes what one process would, up to the order of floating-point sums. Process 0
evaluates, logs and writes every file; the others wait for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Workers", "from_env", "start", "stop"]


@dataclass(frozen=True, slots=True)
class Workers:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Process 0: evaluates, logs and writes files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait until every process gets here (no-op for one process)."""
        if self.parallel:
            dist.barrier()

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Process 0's ``flag``, on every process."""
        if not self.parallel:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def sum_with_gradient(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor over the processes, differentiable.

        Every process then computes the same loss from the sums; the backward pass sums the
        processes' gradients of those sums, which the averaging of the parameter gradients
        (DistributedDataParallel) divides back: the result is the gradient one process would
        get for the whole batch.
        """
        if not self.parallel:
            return value
        return _SumOverProcesses.apply(value)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over the processes."""
        if not self.parallel:
            return value
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: each process's loss depends
    on every process's input through the sum, so the gradient of an input is the sum of the
    processes' gradients of the sum (what ``torch.distributed.nn.functional.all_reduce``,
    now deprecated, computed)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, value: torch.Tensor) -> torch.Tensor:
        total = value.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def from_env() -> Workers:
    """The ranks torchrun put in the environment (none: one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Workers(rank=int(os.environ.get("RANK", "0")), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def start(workers: Workers, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA devices, gloo for CPU); no-op for one process."""
    if workers.parallel and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=workers.rank, world_size=workers.world)


def stop(workers: Workers) -> None:
    """Leave the process group."""
    if workers.parallel and dist.is_initialized():
        dist.destroy_process_group()
