"""`rad eval`: each task's accuracy (through the task's own `evaluate`) and optional fidelity to a
teacher, into one JSON file with provenance; per-sample records beside it. Under torchrun the
backend shards the batches over the ranks; every rank computes the same results and rank 0
writes them."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from harness.common.errors import UserError
from harness.common.files import atomic_write_text
from harness.common.provenance import provenance
from harness.models import inference_dtype, load_model
from harness.tasks.base import TASKS, EvalConfig
from harness.tasks.fidelity import FidelitySettings, evaluate_fidelity
from rad.runtime.distributed import current_world
from rad.runtime.precision import FP32, Precision


def validate(cfg: EvalConfig) -> None:
    """Everything checkable before a model loads: names, numbers, then each task's own checks
    (opt-in, data, lm-eval built-ins)."""
    if cfg.from_samples is not None:
        return _validate_from_samples(cfg)
    if cfg.model is None:
        raise UserError("--model is required (or score a samples file with --from-samples)")
    if not cfg.tasks:
        raise UserError(f"--tasks needs at least one of {', '.join(TASKS.names())}")
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; known tasks: {', '.join(TASKS.names())}")
    p, d = cfg.problems, cfg.decoding
    positive = {"--limit": p.limit, "--batch-size": d.batch_size,
                "--max-gen-toks": d.max_gen_toks, "--samples": d.samples,
                "--gamma": d.gamma, "--spec-tokens": d.spec_tokens, "--threads": cfg.threads}
    bad = [k for k, v in positive.items() if v is not None and v < 1]
    if bad:
        raise UserError(f"{bad[0]} must be >= 1")
    if p.sample_seed is not None and p.limit is None:
        raise UserError("--sample-seed draws --limit problems; give --limit too")
    if p.fewshot is not None and p.fewshot < 0:
        raise UserError("--fewshot must be >= 0")
    if cfg.execution.exec_timeout <= 0:
        raise UserError("--exec-timeout must be > 0")
    if cfg.fidelity != (cfg.teacher is not None):
        raise UserError("--fidelity and --teacher go together (fidelity is measured against "
                        "the teacher)")
    for t in cfg.tasks:
        TASKS.get(t).validate(cfg)


def _validate_from_samples(cfg: EvalConfig) -> None:
    if len(cfg.tasks) != 1 or cfg.tasks[0] not in TASKS:
        raise UserError(f"--from-samples scores one task; give --tasks with one of "
                        f"{', '.join(TASKS.names())}")
    if cfg.model is not None or cfg.fidelity:
        raise UserError("--from-samples scores the file's outputs: drop --model and --fidelity")
    if not cfg.from_samples.is_file():
        raise UserError(f"--from-samples: no file {cfg.from_samples}")
    if cfg.execution.exec_timeout <= 0:
        raise UserError("--exec-timeout must be > 0")
    if any(k < 1 for k in cfg.decoding.pass_k):
        raise UserError("--pass-k values must be >= 1")
    TASKS.get(cfg.tasks[0]).validate(cfg)


def for_task(cfg: EvalConfig, task: str) -> EvalConfig:
    """The config a task runs under: its own limit where `task_limits` names one."""
    p = cfg.problems
    return replace(cfg, problems=replace(p, limit=p.task_limits.get(task, p.limit)))


def samples_path(json_path: Path, task: str, kind: str = "samples") -> Path:
    return json_path.with_name(f"{json_path.stem}.{task}.{kind}.jsonl")


def run_eval(cfg: EvalConfig, precision: Precision = FP32) -> dict[str, Any]:
    """Run every task; write the JSON (after each task, so a long run keeps what it finished)
    and the per-sample JSONL files beside it. Returns the JSON object. The model (and the
    fidelity teacher) run in `precision`'s inference dtype for weights stored in `cfg.dtype`."""
    if cfg.from_samples is not None:
        return _score_samples(cfg)
    # Random and barely trained weights produce denormal activations, which make CPU matmuls
    # 20-60x slower (tiny-random on GSM8K prompts: 9 s vs 0.14 s per 64 tokens); values below
    # ~1e-38 do not change any argmax or metric here. Recorded in the provenance.
    torch.set_flush_denormal(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = inference_dtype(cfg.dtype, precision)
    lm = load_model(cfg.model, dtype=dtype, device=cfg.device)
    teacher = load_model(cfg.teacher, dtype=dtype, device=cfg.device) if cfg.teacher else None
    out: dict[str, Any] = {
        "model": cfg.model, "model_folder": str(lm.folder), "teacher": cfg.teacher,
        "config": _config_record(cfg), "precision": precision.as_dict(),
        "tasks": {}, "provenance": {**provenance(), "torch_threads": torch.get_num_threads(),
                                    "device": cfg.device, "flush_denormal": True}}
    for task in cfg.tasks:
        t0 = time.perf_counter()
        entry = TASKS.get(task).evaluate(lm, for_task(cfg, task))
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        records = entry.pop("records")
        if cfg.json_path:
            entry["samples_file"] = _write_jsonl(samples_path(cfg.json_path, task), records)
        if teacher is not None:
            t1 = time.perf_counter()
            p, d = cfg.problems, cfg.decoding
            fid = evaluate_fidelity(lm, teacher, task, FidelitySettings(
                p.chat, for_task(cfg, task).problems.limit, p.sample_seed, d.batch_size,
                d.gamma, d.spec_tokens))
            fid["wall_s"] = round(time.perf_counter() - t1, 2)
            fid_records = fid.pop("records")
            if cfg.json_path:
                fid["samples_file"] = _write_jsonl(
                    samples_path(cfg.json_path, task, "fidelity"), fid_records)
            entry["fidelity"] = fid
        out["tasks"][task] = entry
        if cfg.json_path and current_world().is_main:
            atomic_write_text(cfg.json_path, json.dumps(out, indent=2))
    return out


def _score_samples(cfg: EvalConfig) -> dict[str, Any]:
    """`rad eval --from-samples`: the task scores a samples file; no model is loaded."""
    task = cfg.tasks[0]
    t0 = time.perf_counter()
    entry = TASKS.get(task).score_samples(cfg)
    entry["wall_s"] = round(time.perf_counter() - t0, 2)
    records = entry.pop("records")
    out = {"model": None, "from_samples": str(cfg.from_samples),
           "config": _config_record(cfg),
           "tasks": {task: entry}, "provenance": provenance()}
    if cfg.json_path:
        entry["samples_file"] = _write_jsonl(samples_path(cfg.json_path, task), records)
        if current_world().is_main:
            atomic_write_text(cfg.json_path, json.dumps(out, indent=2))
    return out


def _config_record(cfg: EvalConfig) -> dict:
    """Every setting under its flag's name, one flat object."""
    concerns = {"problems": cfg.problems, "decoding": cfg.decoding, "execution": cfg.execution}
    flat = {k: v for k, v in asdict(cfg).items() if k not in concerns}
    for part in concerns.values():
        flat.update(asdict(part))
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in flat.items()}


def _write_jsonl(path: Path, records: list[dict]) -> str:
    """Writes on rank 0 only (under torchrun every rank holds the same records)."""
    if current_world().is_main:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path.name
