"""The process world: one process, or one of `torchrun`'s (torch.distributed, gloo on CPU, NCCL
on CUDA). Everything that shards work goes through `World`, so a single process is the same
code with size 1 and no collective ever runs.

Work is sharded by *batch*, round-robin (`World.my_batches`): each batch is exactly the one a
single process would form, so sharded results are bit-identical to one process's, only
computed elsewhere; `World.gather_batches` puts them back in order on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
# Long steps (a selection, an evaluation on rank 0) keep the other ranks waiting at a barrier.
TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def all_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.size

    def my_batches(self, n_batches: int) -> range:
        return range(self.rank, n_batches, self.size)

    def gather_batches(self, mine: list[T], n_batches: int) -> list[T]:
        """Per-batch results of `my_batches` on each rank -> all batches in order, everywhere."""
        per_rank = self.gather(mine)
        return [per_rank[b % self.size][b // self.size] for b in range(n_batches)]

    def map_batches(self, fn: Callable[[int], T], n_batches: int) -> list[T]:
        """fn(batch index) for every batch, sharded over the ranks, in batch order."""
        return self.gather_batches([fn(b) for b in self.my_batches(n_batches)], n_batches)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run fn on rank 0 only (files, a single-process step); its result on every rank."""
        result = fn() if self.is_main else None
        return self.broadcast(result)


SINGLE = World()


def init_world(device: str = "cpu") -> World:
    """The world `torchrun` set up (WORLD_SIZE, RANK, LOCAL_RANK in the environment), its
    process group started once; a single process otherwise."""
    if dist.is_available() and dist.is_initialized():
        return current_world()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SINGLE
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size())


def current_world() -> World:
    """The world of an already initialised process group (SINGLE if there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return SINGLE

