"""The one distillation loop: every method is this loop with a recipe's trainable policy and loss.

AdamW, linear warm-up then cosine decay, gradient clipping and accumulation, optional bf16
autocast (fp32 master weights) where bf16 is fast, held-out KL every `eval_every` steps,
checkpoints every `ckpt_every` steps holding everything a bit-identical resume needs: trainable
weights, optimiser, scheduler, RNG states, the data position and the curve so far. Under
torchrun the same loop runs data-parallel (`parallel`: DDP or FSDP2, the same global batch);
rank 0 writes the checkpoint, in one process's layout, so it resumes on any world size.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from rad.files import atomic_write
from rad.method.distill.losses import TeacherTargets, bucket_kl, distill_loss
from rad.method.distill.parallel import Parallel, rank_rows
from rad.method.distill.trainable import set_trainable
from rad.runtime.distributed import SINGLE, World
from rad.runtime.model import Decoder
from rad.runtime.precision import PRECISIONS, FrozenCasts, Precision, resolve_precision

CHECKPOINT = "checkpoint.pt"
CURVE = "curve.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 4  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    clip_norm: float = 1.0
    loss: str = "forward-kl"
    ce_weight: float = 0.0
    eval_every: int = 10
    ckpt_every: int = 25
    eval_batch_size: int = 8
    precision: str = "auto"  # rad.runtime.precision: auto resolves per device

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.grad_accum, self.eval_every,
               self.ckpt_every) < 1:
            raise ValueError("steps, batch_size, grad_accum, eval_every and ckpt_every must "
                             "be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r} ({', '.join(PRECISIONS)})")

    def as_dict(self) -> dict:
        return asdict(self)


# -- data order ------------------------------------------------------------------------------

def batch_rows(position: int, count: int, n_rows: int, seed: int) -> list[int]:
    """Rows `position .. position + count` of the seeded stream: a fresh permutation of all
    rows per epoch, so the order depends only on (seed, position) and resumes exactly."""
    perms: dict[int, list[int]] = {}  # one permutation per epoch touched by this batch
    rows = []
    for pos in range(position, position + count):
        epoch, i = divmod(pos, n_rows)
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed * 1000 + epoch)
            perms[epoch] = torch.randperm(n_rows, generator=gen).tolist()
        rows.append(perms[epoch][i])
    return rows


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# -- evaluation ------------------------------------------------------------------------------

def _heldout_batches(model: Decoder, ids: torch.Tensor, targets: TeacherTargets,
                     batch_size: int, skip: Collection[int] = ()
                     ) -> Iterator[tuple[torch.Tensor, TeacherTargets]]:
    """(model logits, teacher targets) per held-out batch, in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            yield model(ids[rows].to(model.device), skip=skip), targets[rows].to(model.device)
    finally:
        model.train(was_training)


# The two reductions stay apart: the token-weighted mean of the per-row values is the same
# number up to float32 summation order, and the curves and results record these exact floats.
@torch.no_grad()
def heldout_kl(model: Decoder, ids: torch.Tensor, targets: TeacherTargets,
               batch_size: int = 8, skip: Collection[int] = ()) -> float:
    """Mean per-token forward KL(teacher || model) over held-out sequences (every token);
    `skip`: attention layers bypassed (the draft / skip-init view, for layer selection)."""
    total, count = 0.0, 0
    for logits, batch_targets in _heldout_batches(model, ids, targets, batch_size, skip):
        mask = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        n = int(mask.sum())
        total += float(bucket_kl(logits, batch_targets, mask)) * n
        count += n
    return total / count


@torch.no_grad()
def heldout_kl_rows(model: Decoder, ids: torch.Tensor, targets: TeacherTargets,
                    batch_size: int = 8) -> list[float]:
    """Per held-out sequence, its mean per-token KL(teacher || model): the paired unit when two
    models are compared on the same rows (their mean is `heldout_kl`, rows being equally long)."""
    rows: list[float] = []
    for logits, batch_targets in _heldout_batches(model, ids, targets, batch_size):
        mask = torch.ones((1, logits.shape[1]), dtype=torch.bool, device=logits.device)
        rows.extend(float(bucket_kl(logits[j:j + 1], batch_targets[j:j + 1], mask))
                    for j in range(logits.shape[0]))
    return rows


# -- checkpoints -----------------------------------------------------------------------------

@dataclass
class Progress:
    """Where a run stands. With the trainable weights, optimiser, scheduler and RNG states it is
    everything a bit-identical resume needs."""
    step: int = 0
    position: int = 0  # rows of the seeded data stream consumed
    curve: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    pending: list[float] = field(default_factory=list)  # training losses since the last eval


def load_checkpoint(path: Path, run: dict, par: Parallel, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler) -> Progress:
    """Restore `path` into the parameters, optimiser, scheduler and RNGs and return its
    progress; a fresh start where there is no checkpoint. `run`: config, seed and policy, which
    must match the checkpoint's."""
    if not path.exists():
        return Progress()
    ckpt = torch.load(path, weights_only=False)
    if any(ckpt[k] != v for k, v in run.items()):
        raise ValueError(f"{path} belongs to another run (config, seed or policy differ); "
                         "remove the run folder to start over")
    par.load_params(ckpt["params"])
    par.load_optimizer(opt, ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["torch_rng"])
    random.setstate(ckpt["python_rng"])
    return Progress(ckpt["step"], ckpt["position"], ckpt["curve"], ckpt["wall_s"],
                    ckpt["pending_losses"])


def save_checkpoint(path: Path, run: dict, par: Parallel, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, progress: Progress) -> None:
    """What `load_checkpoint` reads; every rank calls it (under FSDP gathering the full
    tensors is a collective), rank 0 writes."""
    p = progress
    state = {**run, "step": p.step, "position": p.position, "curve": p.curve,
             "wall_s": p.wall_s, "pending_losses": list(p.pending),
             "params": par.full_params(), "optimizer": par.full_optimizer(opt),
             "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
             "python_rng": random.getstate()}
    if par.world.is_main:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    par.world.barrier()


def _write_curve(path: Path, curve: list[dict]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in curve)))


# -- the loop --------------------------------------------------------------------------------

def optimizer_step(par: Parallel, opt: torch.optim.Optimizer,
                   sched: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig, seed: int,
                   train_ids: torch.Tensor, train_targets: TeacherTargets,
                   progress: Progress, precision: Precision,
                   casts: FrozenCasts | None = None) -> float:
    """One optimiser step over `cfg.grad_accum` micro-batches of the seeded data stream, read
    from `progress.position` on (which it advances), its forwards under `precision` (resolved
    once per run from `cfg.precision`, with `casts`: the frozen weights' bf16 copies made once
    per run); returns the global batch's mean loss."""
    casts = casts if casts is not None else FrozenCasts(par.model, precision)
    device = par.model.device
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(cfg.grad_accum):
        rows = rank_rows(batch_rows(progress.position, cfg.batch_size, train_ids.shape[0], seed),
                         par.world)
        progress.position += cfg.batch_size
        ids = train_ids[rows].to(device)
        mask = torch.ones(ids.shape, dtype=torch.bool, device=device)
        with par.no_sync(last=micro == cfg.grad_accum - 1), casts.applied():
            with precision.autocast(device):  # the loss below computes in fp32
                logits = par.module(ids)
            loss = distill_loss(logits, train_targets[rows].to(device), ids, mask, cfg.loss,
                                cfg.ce_weight, fused=precision.bf16)
            (loss / cfg.grad_accum).backward()
        total += float(loss.detach()) / cfg.grad_accum
    total = par.world.all_mean(total)  # the global batch's loss (equal tokens per rank)
    torch.nn.utils.clip_grad_norm_([p for _, p in par.named], cfg.clip_norm)
    opt.step()
    sched.step()
    return total


class TrainData(NamedTuple):
    """Token rows and the teacher's targets for them: what the loop trains on, and the held-out
    rows its curve is measured on."""
    train_ids: torch.Tensor  # (N, T)
    train_targets: TeacherTargets
    heldout_ids: torch.Tensor  # (M, T)
    heldout_targets: TeacherTargets


def train(model: Decoder, policy: str, cfg: TrainConfig, seed: int, data: TrainData,
          run_dir: Path, *, progress: bool = True, stop_after: int | None = None,
          world: World = SINGLE, parallel: str = "auto") -> list[dict]:
    """Distil `model` in place for cfg.steps optimiser steps; returns the curve.

    run_dir holds the checkpoint and curve.jsonl; an existing checkpoint there is resumed.
    stop_after: return after that many steps (as a kill would; tests use it).
    world / parallel: this process's rank and the data-parallel engine (auto: DDP when part of
    the model trains, FSDP2 when all of it does); every rank calls train() alike.
    """
    run_dir = Path(run_dir)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    world.barrier()
    params = set_trainable(model, policy)
    par = Parallel(model, list(params.items()), parallel, world)
    opt = torch.optim.AdamW([p for _, p in par.named], lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    run = {"config": cfg.as_dict(), "seed": seed, "policy": policy}
    ckpt_path = run_dir / CHECKPOINT
    state = load_checkpoint(ckpt_path, run, par, opt, sched)
    precision = resolve_precision(cfg.precision, model.device)
    casts = FrozenCasts(model, precision)
    model.train()
    tokens_per_step = cfg.batch_size * cfg.grad_accum * data.train_ids.shape[1]

    def evaluate(train_loss: float | None) -> None:
        state.curve.append({
            "step": state.step, "tokens": state.step * tokens_per_step, "wall_s": state.wall_s,
            "train_loss": train_loss, "heldout_kl": heldout_kl(
                par.eval_module, data.heldout_ids, data.heldout_targets, cfg.eval_batch_size),
            "lr": sched.get_last_lr()[0]})

    if not state.curve:
        evaluate(None)  # step 0: where the method starts
    bar = tqdm(total=cfg.steps, initial=state.step, desc="distill", unit="step",
               disable=not (progress and world.is_main))
    last = cfg.steps if stop_after is None else min(cfg.steps, state.step + stop_after)
    while state.step < last:
        t0 = time.perf_counter()
        loss = optimizer_step(par, opt, sched, cfg, seed, data.train_ids, data.train_targets,
                              state, precision, casts)
        state.step += 1
        state.wall_s += time.perf_counter() - t0
        state.pending.append(loss)
        bar.update()
        bar.set_postfix(loss=f"{loss:.4f}",
                        tok_s=f"{tokens_per_step * state.step / state.wall_s:.0f}")
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            evaluate(sum(state.pending) / len(state.pending))
            state.pending.clear()
            if world.is_main:
                _write_curve(run_dir / CURVE, state.curve)
        if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
            save_checkpoint(ckpt_path, run, par, opt, sched, state)
    bar.close()
    par.finish()
    model.eval().requires_grad_(False)
    if world.is_main:
        _write_curve(run_dir / CURVE, state.curve)
    world.barrier()
    return state.curve
