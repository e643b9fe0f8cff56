"""Data-parallel distillation on torch.distributed's own engines.

- DDP when only some parameters train (RAD's SSM-only policy): the frozen teacher-initialised
  weights are replicated on every rank and DDP's bucketed all-reduce covers the trainable
  parameters alone (it registers hooks only on parameters that require grad).
- FSDP2 (`fully_shard`, per decoder block and the root) when every parameter trains: the
  parameters, gradients and optimizer state are sharded. It trains a copy of the model; the
  full weights are copied back into the original at the end, so callers see one plain model.

The global batch is what the config says: each micro-batch of `batch_size` rows is split over
the ranks (batch_size / world size rows each); gradients are averaged, so with equal tokens per
row the update equals one process's. Checkpoints hold full (unsharded) tensors in one
process's layout, so a run resumes on any world size.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from rad.runtime.distributed import World
from rad.runtime.model import Decoder

STRATEGIES = ("auto", "ddp", "fsdp")


def choose(strategy: str, world: World, n_trainable: int, n_params: int) -> str:
    """'single', 'ddp' or 'fsdp': auto is DDP when part of the model trains, FSDP2 when all."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {strategy!r} ({', '.join(STRATEGIES)})")
    if not world.distributed:
        return "single"
    if strategy == "auto":
        return "ddp" if n_trainable < n_params else "fsdp"
    return strategy


def rank_rows(rows: list[int], world: World) -> list[int]:
    """This rank's share of one micro-batch's rows."""
    if len(rows) % world.size:
        raise ValueError(f"batch_size {len(rows)} must be a multiple of the world size "
                         f"{world.size} (each rank takes an equal share of every micro-batch)")
    per = len(rows) // world.size
    return rows[world.rank * per:(world.rank + 1) * per]


class Parallel:
    """The model as the loop drives it: `module` for forward/backward, `named` the trainable
    parameters (sharded DTensors under FSDP), and the conversions checkpoints need."""

    def __init__(self, model: Decoder, named: list[tuple[str, torch.nn.Parameter]],
                 strategy: str, world: World):
        self.model, self.world = model, world
        self.strategy = choose(strategy, world, sum(p.numel() for _, p in named),
                               sum(p.numel() for p in model.parameters()))
        self.module: torch.nn.Module = model
        self.named = named
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [model.device.index] if model.device.type == "cuda" else None
            self.module = DistributedDataParallel(model, device_ids=device_ids)  # no buffers
        elif self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            work = copy.deepcopy(model)
            for block in work.layers:
                fully_shard(block)
            fully_shard(work)
            self.module = work
            params = dict(work.named_parameters())
            self.named = [(n, params[n]) for n, _ in named]

    def no_sync(self, last: bool):
        """DDP: skip the all-reduce on all but the last micro-batch of an accumulation."""
        if self.strategy == "ddp" and not last:
            return self.module.no_sync()
        return contextlib.nullcontext()

    @property
    def eval_module(self) -> torch.nn.Module:
        return self.model if self.strategy == "ddp" else self.module

    # -- checkpoints: full tensors, one process's layout ---------------------------------------
    def full_params(self) -> dict[str, torch.Tensor]:
        return {n: _full(p).detach().clone() for n, p in self.named}

    def load_params(self, saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(_like(saved[n], p))

    def full_optimizer(self, opt: torch.optim.Optimizer) -> dict:
        sd = opt.state_dict()
        if self.strategy == "fsdp":
            sd["state"] = {i: {k: _full(v) for k, v in s.items()} for i, s in sd["state"].items()}
        return sd

    def load_optimizer(self, opt: torch.optim.Optimizer, sd: dict) -> None:
        if self.strategy == "fsdp":
            params = [p for _, p in self.named]
            sd = {**sd, "state": {i: {k: _like(v, params[int(i)]) if torch.is_tensor(v)
                                      and v.dim() else v for k, v in s.items()}
                                  for i, s in sd["state"].items()}}
        opt.load_state_dict(sd)

    def finish(self) -> None:
        """FSDP: the trained full weights back into the caller's (unwrapped) model."""
        if self.strategy == "fsdp":
            original = dict(self.model.named_parameters())
            with torch.no_grad():
                for n, p in self.named:
                    original[n].copy_(_full(p))


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `ref` (sharded the same way if ref is a DTensor)."""
    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.device), ref.device_mesh, ref.placements)
    return full
