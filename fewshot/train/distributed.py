"""Training on several processes with PyTorch's own engine, launched by `torchrun`.

`torchrun --nproc_per_node=N -m fewshot meta-train ...` starts N copies of the command;
torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, the rendezvous) is all this
module reads, so single-node, multi-node (`--nnodes`, `--rdzv-endpoint`), SLURM and
Kubernetes launches are the same code. NCCL on GPUs (one per local rank), gloo on CPUs.

What each rank does is kept in one place here: `World` says who we are, rank 0 alone
writes files (the run folder, checkpoints, metrics.jsonl, W&B), gradients are averaged by
one all-reduce per step, and flags that end the loop (Ctrl-C, early stopping) are agreed
on by all ranks before any acts on them, so no rank waits forever for another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes files and talks to the user."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device_for_collectives())
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return bool(tensor.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device_for_collectives())
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def device_for_collectives(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def reduce_gradients(self, module: nn.Module, scale: float) -> None:
        """Multiply this rank's gradients by `scale` (its share of the global batch), then
        sum them over ranks: every rank holds the gradient of the global mean loss. A
        parameter with a gradient on any rank gets one on all (zeros where it had none),
        so a rank with no task in a step still takes part."""
        params = [p for p in module.parameters() if p.requires_grad]
        if not self.distributed:
            grads = [p.grad for p in params if p.grad is not None]
            if grads and scale != 1.0:
                for g in grads:
                    g.mul_(scale)
            return
        device = self.device_for_collectives()
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8,
                           device=device)
        torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MAX)
        chosen = [p for p, h in zip(params, has.tolist(), strict=True) if h]
        if not chosen:
            return
        for p in chosen:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in chosen]) * scale  # one message a step
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in chosen:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every rank, as
        DistributedDataParallel keeps them: each rank saw other images."""
        if not self.distributed:
            return
        kept = module.state_dict(keep_vars=True)  # persistent buffers only: a head's
        for name, buffer in module.named_buffers():  # per-episode ones differ in shape
            if name in kept:
                torch.distributed.broadcast(buffer.data, src=0)


SINGLE = World()


def world_from_env() -> World:
    """The torchrun world of this process (world size 1 when not launched by torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device_name: str) -> World:
    """Join the process group torchrun set up (NCCL when this rank has a GPU, else gloo)."""
    world = world_from_env()
    if not world.distributed or torch.distributed.is_initialized():
        return world
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return world


def rank_device(world: World, device: torch.device) -> torch.device:
    """A GPU per local rank; the CPU as it is."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return device


def close_world(world: World) -> None:
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def episode_generator(seed: int, index: int) -> torch.Generator:
    """The augmentation generator of episode `index`: the same on any rank and world size."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))


def check_in_step(module: nn.Module, world: World) -> None:
    """Raise when the ranks' parameters differ (a checksum a rank, compared on all): they
    take the same update from the same start, so a difference is a bug, not noise."""
    if not world.distributed:
        return
    with torch.no_grad():
        flat = [p.detach().double().reshape(-1) for p in module.parameters()]
        values = torch.cat(flat) if flat else torch.zeros(1, dtype=torch.float64)
        mine = torch.stack([values.sum(), values.square().sum(),
                            (values * torch.arange(len(values), dtype=torch.float64)).sum()])
    mine = mine.to(world.device_for_collectives())
    gathered = [torch.empty_like(mine) for _ in range(world.size)]
    torch.distributed.all_gather(gathered, mine)
    if any(not torch.equal(gathered[0], g) for g in gathered[1:]):
        sums = [g.tolist() for g in gathered]
        raise RuntimeError(f"rank parameters drifted apart (checksums {sums})")
