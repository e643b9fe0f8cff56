"""`rad reproduce --dry-run`: every step a profile would run, with its peak memory per GPU and
its time, estimated from the models' config.json alone (no weights, no GPU, no data).

Memory is counted, not guessed, where it can be: parameters and inference state come from the
runtime's own modules built on the meta device (the hybrid's Mamba2 mixers included). The rest
is a stated model: training activations ~34 bytes x hidden size per token per layer in bf16
(Korthikanti et al. 2022, flash attention, no recomputation) plus fp32 logits and their
gradient; AdamW keeps two states per trained parameter in its dtype.

Time is FLOPs over an assumed sustained rate (training and prefill: 2 x params FLOPs per token
forward, about x3 with a full backward) or, for decoding, bytes over an assumed bandwidth
(every step reads the weights and the state) plus our runtime's measured per-layer overhead
per decode step on an H200 (`Gpu.step_s_per_layer`, the only measured figure here). The rates
are printed with the estimate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.common.errors import UserError
from harness.experiment.config import ExperimentConfig
from harness.models import parse_dtype, resolve_model_folder
from harness.tasks.base import TASKS
from rad.method.distill.parallel import choose
from rad.method.distill.trainable import TRAINABLE_POLICIES
from rad.method.recipes import get_recipe
from rad.runtime.config import ModelConfig
from rad.runtime.distributed import World
from rad.runtime.mamba2 import Mamba2Sizes
from rad.runtime.model import Decoder

MODEL_CONFIGS = Path(__file__).with_name("model_configs")  # hub ids -> shipped config.json
FULL_TEST_SETS = {"gsm8k": 1319, "math500": 500, "humaneval": 164, "cruxeval": 800,
                  "cruxeval_i": 800, "piqa": 1838, "winogrande": 1267,
                  "lambada_openai": 5153}  # limit: null
LIKELIHOOD_TOKENS = 128  # per item of a likelihood task: ~2 choices x 64 tokens, one forward
PROMPT_TOKENS = 256  # a 0-shot chat prompt, for the state held while answering
GB = 1e9


@dataclass(frozen=True)
class Gpu:
    name: str = "80 GB H100/H200-class GPU"
    memory_gb: float = 80.0
    flops: float = 989e12  # dense bf16 peak
    mfu: float = 0.35  # sustained share of it in training and prefill (assumed)
    bandwidth: float = 3.35e12  # HBM bytes/s (H100 SXM; an H200 has 4.8e12)
    bandwidth_use: float = 0.5  # sustained share while decoding (assumed)
    # Measured, not assumed: our compiled (CUDA-graph) decode step on an H200 ran the
    # SmolLM2-135M shape (30 layers) at 683 tok/s at batch 1, 1.46 ms per step of which ~0.16
    # is reading the weights: ~45 us per layer per step of host and launch overhead
    # (results/gpu/README.md; the eager step was ~2 ms per layer).
    step_s_per_layer: float = 45e-6


@dataclass
class Step:
    name: str
    what: str
    memory_gb: float  # peak per GPU on one GPU
    seconds: float  # on one GPU
    shards: bool  # splits over ranks under torchrun (distillation, evaluation)
    sharded_memory_gb: float | None = None  # per GPU with FSDP over the ranks, where it differs


def model_config(name: str) -> ModelConfig:
    shipped = MODEL_CONFIGS / (name.replace("/", "--") + ".json")
    if shipped.exists():
        return ModelConfig.from_hf(json.loads(shipped.read_text()))
    try:
        folder = resolve_model_folder(name)
    except UserError:
        raise UserError(f"no config.json for {name!r}: ship it as {shipped} (the dry run "
                        "reads shapes only)") from None
    return ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))


def meta_model(cfg: ModelConfig, mamba_layers: int = 0, dtype: str = "bf16") -> Decoder:
    kinds = ["mamba2"] * mamba_layers + ["attention"] * (cfg.n_layers - mamba_layers)
    with torch.device("meta"):
        model = Decoder(cfg, kinds, Mamba2Sizes.from_model_config(cfg))
    return model.to(parse_dtype(dtype))


def params(model: Decoder) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_bytes(model: Decoder) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_seconds(model: Decoder, gpu: Gpu, steps: int, batch: int, context: int) -> float:
    """Each step reads the weights and the state, after our runtime's per-layer overhead."""
    per_step = weight_bytes(model) + model.state_bytes(batch, context)
    return steps * (per_step / (gpu.bandwidth * gpu.bandwidth_use)
                    + gpu.step_s_per_layer * model.cfg.n_layers)


def search_seconds(model: Decoder, gpu: Gpu, objective: str, skip_sets: int, prompts: int,
                   new_tokens: int, gamma: int, context: int) -> float:
    """Scoring `skip_sets` skip sets on `prompts` x `new_tokens` tokens. Real decoding: every
    set decodes every token at batch 1. Teacher-forced: the verifier decodes once, then each
    set costs gamma batched forwards over every round start (compute, not bandwidth)."""
    if objective != "teacher-forced":
        return decode_seconds(model, gpu, skip_sets * prompts * new_tokens, 1, context)
    trace = decode_seconds(model, gpu, prompts * new_tokens, 1, context)
    return trace + skip_sets * flops_seconds(2 * params(model) * gamma * prompts * new_tokens,
                                             gpu)


def flops_seconds(flops: float, gpu: Gpu) -> float:
    return flops / (gpu.flops * gpu.mfu)


def training_memory(model: Decoder, trained: int, batch: int, seq: int) -> tuple[int, int]:
    """(bytes FSDP shards: weights, gradients, AdamW's two moments; bytes it does not:
    activations and logits)."""
    cfg, elt = model.cfg, next(model.parameters()).element_size()
    shardable = weight_bytes(model) + trained * elt * 3
    activations = batch * seq * cfg.n_layers * cfg.hidden_size * 34
    logits = batch * seq * cfg.vocab_size * (2 + 4 + 4)  # bf16 logits, fp32 log-softmax, grad
    return shardable, activations + logits


def plan(cfg: ExperimentConfig, gpu: Gpu = Gpu(), ranks: int = 8) -> list[Step]:
    student_cfg = model_config(cfg.model)
    teacher_cfg = model_config(cfg.teacher) if cfg.teacher else student_cfg
    base, teacher = meta_model(student_cfg, 0, cfg.dtype), meta_model(teacher_cfg, 0, cfg.dtype)
    n_teacher = params(teacher)
    s, d, e, b = cfg.selection, cfg.distill, cfg.eval, cfg.bench
    n_prompts = int(s.prompts.rpartition(":")[2] or 1)
    spec_ctx = PROMPT_TOKENS + s.max_new_tokens
    steps = [
        Step("diagnose", f"{cfg.model}: each of {student_cfg.n_layers} layers skipped alone, "
             f"{n_prompts} prompts x {s.max_new_tokens} tokens, {s.objective}",
             (weight_bytes(base) + base.state_bytes(1, spec_ctx)) / GB,
             search_seconds(base, gpu, s.objective, student_cfg.n_layers + 1, n_prompts,
                            s.max_new_tokens, s.gamma, spec_ctx), False),
        Step("select", f"{s.trials} trials x {n_prompts} prompts x {s.max_new_tokens} tokens, "
             f"{s.objective}",
             (weight_bytes(base) + base.state_bytes(1, spec_ctx)) / GB,
             search_seconds(base, gpu, s.objective, s.trials, n_prompts, s.max_new_tokens,
                            s.gamma, spec_ctx), False),
        Step("teacher targets", f"{cfg.teacher or cfg.model} forward over "
             f"{d.n_train + d.n_heldout} x {d.seq_len} tokens, top-{d.topk} kept (cached once)",
             (weight_bytes(teacher) + 4 * d.seq_len * teacher_cfg.vocab_size * 4) / GB,
             flops_seconds(2 * n_teacher * (d.n_train + d.n_heldout) * d.seq_len, gpu), True),
    ]
    tokens = d.steps * d.batch_size * d.grad_accum * d.seq_len
    n_tasks = {t: e.limits.get(t, e.limit) or FULL_TEST_SETS.get(t, 500) for t in e.tasks}
    generated = {t: v for t, v in n_tasks.items() if TASKS.get(t).generates}
    scored = sum(v for t, v in n_tasks.items() if not TASKS.get(t).generates)
    for method in cfg.methods:
        recipe = get_recipe(method)
        k = 0 if not recipe.trains else student_cfg.n_layers \
            if recipe.layer_selector.replaces_all else cfg.k
        model = meta_model(student_cfg, k, cfg.dtype)
        n = params(model)
        # the recipe's policy picks its parameters on the meta model, as it will on the real one
        trained = sum(p.numel() for p in TRAINABLE_POLICIES.get(recipe.trainable)(model).values()
                      ) if recipe.trains else 0
        for seed in cfg.seeds[:1] if not recipe.trains else cfg.seeds_for(method):
            # (an untrained row's evaluation and bench have one step key for every seed)
            cell = f"{method}-s{seed}"
            if recipe.trains:
                shardable, rest = training_memory(model, trained, d.batch_size, d.seq_len)
                flops = tokens * (4 * n + 2 * trained)  # forward, activation and weight grads
                fsdp = ((shardable / ranks + rest) / GB  # the strategy `auto` picks over ranks
                        if choose("auto", World(0, ranks), trained, n) == "fsdp" else None)
                steps.append(Step(f"distill {cell}", f"{d.steps} steps x {d.batch_size} x "
                                  f"{d.grad_accum} x {d.seq_len} tokens, {trained / 1e9:.2f}B "
                                  "trained", (shardable + rest) / GB, flops_seconds(flops, gpu),
                                  True, fsdp))
            ctx = PROMPT_TOKENS + e.max_gen_toks
            batches = sum(math.ceil(v / e.batch_size) for v in generated.values())
            steps.append(Step(f"eval {cell}", ", ".join(f"{t} {v}" for t, v in n_tasks.items())
                              + f"; generation at most {e.max_gen_toks} tokens, batch "
                              f"{e.batch_size}"
                              + (f"; likelihood ~{LIKELIHOOD_TOKENS} tokens per item"
                                 if scored else ""),
                              (weight_bytes(model) + model.state_bytes(e.batch_size, ctx)) / GB,
                              decode_seconds(model, gpu, batches * e.max_gen_toks, e.batch_size,
                                             ctx)
                              + flops_seconds(2 * n * scored * LIKELIHOOD_TOKENS, gpu), True))
            ctx = b.context + b.new_tokens
            both = [model, base]
            steps.append(Step(f"bench {cell}", f"context {b.context}, batch {b.batch}, "
                              f"{b.new_tokens} new tokens x {b.repeats}, beside the base model",
                              max(weight_bytes(m) + m.state_bytes(b.batch, ctx) for m in both)
                              / GB,
                              b.repeats * sum(flops_seconds(2 * params(m) * b.batch * b.context,
                                                            gpu)
                                              + decode_seconds(m, gpu, b.new_tokens, b.batch, ctx)
                                              for m in both), False))
    return steps


def _time(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" \
        if seconds >= 60 else f"{seconds:.0f} s"


def dry_run_lines(cfg: ExperimentConfig, out: Path, gpu: Gpu = Gpu(), ranks: int = 8) -> list[str]:
    steps = plan(cfg, gpu, ranks)
    lines = [f"rad reproduce --profile {cfg.profile} --dry-run: {len(steps)} steps into {out} "
             f"(nothing run, nothing written)",
             f"estimates for one {gpu.name}: {gpu.mfu:.0%} of {gpu.flops / 1e12:.0f} TFLOP/s "
             f"bf16 in training and prefill, {gpu.bandwidth_use:.0%} of "
             f"{gpu.bandwidth / 1e12:.2f} TB/s while decoding (assumed), plus "
             f"{gpu.step_s_per_layer * 1e6:.0f} us per layer per decode step (our runtime, "
             "measured on an H200: results/gpu/README.md)",
             "", "| step | what | memory GB/GPU | fits | time, 1 GPU | "
             f"time, {ranks} GPUs |", "|---|---|---|---|---|---|"]
    total1 = total8 = 0.0
    for st in steps:
        t8 = st.seconds / ranks if st.shards else st.seconds
        total1, total8 = total1 + st.seconds, total8 + t8
        mem = f"{st.memory_gb:.1f}" + (f" ({st.sharded_memory_gb:.1f} with FSDP x{ranks})"
                                       if st.sharded_memory_gb is not None else "")
        fits = "yes" if st.memory_gb <= gpu.memory_gb else (
            f"with FSDP x{ranks}" if st.sharded_memory_gb is not None
            and st.sharded_memory_gb <= gpu.memory_gb else "no")
        lines.append(f"| {st.name} | {st.what} | {mem} | {fits} | {_time(st.seconds)} | "
                     f"{_time(t8)} |")
    lines += ["", f"total: {_time(total1)} on 1 GPU, {_time(total8)} on {ranks} GPUs "
              f"(distillation, teacher targets and evaluation shard over the ranks; "
              f"diagnosis, selection and benches run on rank 0)"]
    return lines
