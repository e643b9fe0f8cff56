"""The paper profile's shapes for real, with random weights: teacher targets for one batch from
a Llama-3.1-8B-shaped teacher, a few SSM-only distillation steps of a Llama-3.2-3B-shaped 50%
hybrid at the profile's sequence length and batch in bf16, and one decode window at the bench's
context and batch; measured peak memory and time per step beside the dry run's estimate for the
same step (`harness/experiment/estimate.py`).

usage: python tests/gpu/paper_shapes.py OUT.json          (CUDA, the shipped configs)
       python tests/gpu/paper_shapes.py OUT.json --dry    (CPU rehearsal: tiny shapes, fp32)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.experiment import estimate
from harness.experiment.bench_throughput import bench_pair
from harness.experiment.config import load_config
from harness.experiment.distill_data import compute_targets
from harness.models import parse_dtype
from rad.method.distill.loop import TrainConfig, TrainData, train
from rad.method.replace import build_hybrid
from rad.method.select import SELECTORS, SelectionRequest
from rad.runtime.config import ModelConfig
from rad.runtime.model import Decoder

GB = 1e9
# The dry run shrinks every size but keeps the structure (GQA, tied or untied head, k = L / 2).
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=512)


def shaped(name: str, dry: bool) -> ModelConfig:
    d = json.loads((estimate.MODEL_CONFIGS / (name.replace("/", "--") + ".json")).read_text())
    if dry:
        d = {**d, **TINY, "num_hidden_layers": 4}
    return ModelConfig.from_hf(d)


def random_decoder(cfg: ModelConfig, device: str, dtype: torch.dtype) -> Decoder:
    """Random weights straight in `dtype` on `device` (an 8B model never exists in fp32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            return Decoder(cfg).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(old)


class Meter:
    """Peak device memory (CUDA) and wall time of a block, synchronised."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.peak_gb = torch.cuda.max_memory_allocated() / GB if self.cuda else None


def estimated(steps: list[estimate.Step], prefix: str) -> estimate.Step:
    return next(s for s in steps if s.name.startswith(prefix))


def main(out: Path, dry: bool) -> None:
    device = "cpu" if dry else "cuda"
    cfg = load_config("paper")
    d, b = cfg.distill, cfg.bench
    if dry:  # the same steps at sizes a CPU runs in seconds
        d = dataclasses.replace(d, seq_len=64, batch_size=2, grad_accum=2)
        b = dataclasses.replace(b, context=128, batch=2, new_tokens=4)
    dtype = parse_dtype("fp32" if dry else cfg.dtype)
    plan = estimate.plan(cfg)
    report: dict = {"device": torch.cuda.get_device_name() if not dry else "cpu (dry)",
                    "torch": torch.__version__, "dry": dry, "dtype": str(dtype),
                    "seq_len": d.seq_len, "batch_size": d.batch_size,
                    "grad_accum": d.grad_accum, "topk": d.topk}
    student_cfg, teacher_cfg = shaped(cfg.model, dry), shaped(cfg.teacher, dry)
    gen = torch.Generator().manual_seed(0)
    rows = d.batch_size * d.grad_accum
    ids = torch.randint(0, teacher_cfg.vocab_size, (rows + 2, d.seq_len), generator=gen)

    # 1. teacher targets for one batch of the 8B-shaped teacher
    teacher = random_decoder(teacher_cfg, device, dtype)
    compute_targets(teacher, ids[:1, :16], d.topk, 1.0)  # warm-up (kernels, allocator)
    with Meter(device) as m:
        targets = compute_targets(teacher, ids, d.topk, 1.0, batch_size=d.batch_size)
    est = estimated(plan, "teacher targets")
    batches = -(-ids.shape[0] // d.batch_size)
    n_batches = -(-(d.n_train + d.n_heldout) // d.batch_size)
    report["teacher_targets"] = {
        "params": estimate.params(teacher), "batches": batches,
        "seconds_per_batch": m.seconds / batches, "peak_gb": m.peak_gb,
        "estimate_seconds_per_batch": est.seconds / n_batches, "estimate_gb": est.memory_gb}
    del teacher
    if device == "cuda":
        torch.cuda.empty_cache()

    # 2. SSM-only distillation steps of the 3B-shaped 50% hybrid (the rad recipe's policy)
    student = random_decoder(student_cfg, device, dtype)
    layers = SELECTORS.get("uniform")(SelectionRequest(student_cfg.n_layers, cfg.k
                                                          if not dry else 2))
    hybrid = build_hybrid(student, layers, "skip", seed=0)
    n_steps = 2 if dry else 4
    tc = TrainConfig(steps=n_steps, batch_size=d.batch_size, grad_accum=d.grad_accum, lr=d.lr,
                     warmup_steps=1, eval_every=1, ckpt_every=n_steps, eval_batch_size=2,
                     precision="fp32" if dry else cfg.precision)
    with tempfile.TemporaryDirectory() as tmp, Meter(device) as m:
        curve = train(hybrid, "ssm-only", tc, 0, TrainData(ids[:rows], targets[:rows],
                                                           ids[rows:], targets[rows:]),
                      Path(tmp), progress=False)
    walls = [c["wall_s"] for c in curve]
    per_step = [b_ - a for a, b_ in zip(walls, walls[1:], strict=False)]
    est = estimated(plan, "distill rad-")
    report["distill"] = {
        "layers": layers, "steps": n_steps, "tokens_per_step": rows * d.seq_len,
        "seconds_per_step": per_step, "seconds_per_step_after_first": (
            sum(per_step[1:]) / len(per_step[1:]) if len(per_step) > 1 else None),
        "peak_gb": m.peak_gb, "heldout_kl": [c["heldout_kl"] for c in curve],
        "estimate_seconds_per_step": est.seconds / d.steps, "estimate_gb": est.memory_gb}

    # 3. one decode window at the bench's context and batch, the hybrid beside its base model
    # (the bench step: prefill one row, copy its cache to the batch, time windows interleaved)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pair = bench_pair(student, hybrid, b.context, b.batch, b.new_tokens, repeats=2)
    est = estimated(plan, "bench rad-")
    report["decode"] = {
        "context": b.context, "batch": b.batch, "new_tokens": b.new_tokens,
        "hybrid_tok_s": pair["model"]["decode_tok_s"], "base_tok_s": pair["base"]["decode_tok_s"],
        "speedup": pair["speedup"], "wall_s": time.perf_counter() - t0,
        "peak_gb_both_models": torch.cuda.max_memory_allocated() / GB if device == "cuda"
        else None, "estimate_gb_larger_model": est.memory_gb,
        "estimate_seconds": est.seconds}
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--dry" in sys.argv[2:])
