"""CRUXEval (Gu et al. 2024; 800 short Python functions `f` with an input and its output), the
code-reasoning benchmark RAD reports, as two tasks:

- `cruxeval` (CRUXEval-O, output prediction): given `f` and an input, predict the output.
  Scored without executing model text: the prediction is parsed as a Python literal
  (`ast.literal_eval`, which evaluates nothing) and compared with the gold output by `==`;
  a prediction that is not a literal is wrong.
- `cruxeval_i` (CRUXEval-I, input prediction): given `f` and an output, predict an input. The
  prediction is parsed as a literal argument list the same way, then the *dataset's* `f` runs
  on it inside the code-execution containment (`harness.tasks.sandbox`), and the answer is
  right when `f(prediction) == output` (any input that produces the output counts).

Prompts have the shape of the CRUXEval paper's direct prompts: its instruction, its worked
examples in [PYTHON] / [ANSWER] tags (plain: few-shot), or the instruction and the problem in
one user turn of the chat template (chat: 0-shot). In both the answer line is opened for the
model up to the part it predicts ("assert f(<input>) == " / "assert f("), so it writes only the
prediction; generation is greedy and stops at the line's end or "[/ANSWER]".
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from harness.common.errors import UserError
from harness.models import LoadedModel
from harness.tasks.base import CodeExecution, EvalConfig, Task, TaskData, register_task
from harness.tasks.batching import batched_generate
from harness.tasks.data import BadRow, doc_indices, load_task
from harness.tasks.sandbox import ExecLimits, isolation_summary, require_opt_in, run_programs
from rad.runtime.prompts import render_prompt

MAX_ANSWER_TOKENS = 64  # the longest gold output is 45 tokens (SmolLM2's tokenizer)
STOP = ["\n", "[/ANSWER]"]

OUTPUT_INSTRUCTION = (
    "You are given a Python function and an assertion containing an input to the function. "
    "Complete the assertion with a literal (no unsimplified expressions, no function calls) "
    "containing the output when executing the provided code on the given input, even if the "
    "function is incorrect or incomplete. Do NOT output any extra information. Provide the full "
    "assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples.")
INPUT_INSTRUCTION = (
    "You will be given a function f and an output in the form f(??) == output. Find any input "
    "such that executing f on the input leads to the given output. There may be multiple "
    "answers, but you should only output one. In [ANSWER] and [/ANSWER] tags, complete the "
    "assertion with one such input that will produce the output when executing the function.")
# The paper's worked examples: (code, input, output).
OUTPUT_SHOTS = (("def f(n):\n    return n", "17", "17"),
                ("def f(s):\n    return s + \"a\"", "\"x9j\"", "\"x9ja\""))
INPUT_SHOTS = (("def f(my_list):\n    count = 0\n    for i in my_list:\n"
                "        if len(i) % 2 == 0:\n            count += 1\n    return count",
                "[\"mq\", \"px\", \"zy\"]", "3"),
               ("def f(s1, s2):\n    return s1 + s2", "\"ba\", \"nana\"", "\"banana\""))


@dataclass(frozen=True)
class CruxExample:
    id: str
    code: str  # defines f
    input: str  # the argument list as Python source
    output: str  # f(*input) as a Python literal


def parse_row(row: dict[str, Any]) -> CruxExample:
    if "def f(" not in row["code"]:
        raise BadRow("field 'code' does not define f")
    try:
        ast.literal_eval(row["output"])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise BadRow(f"field 'output' is not a Python literal: {row['output'][:40]!r}") from None
    return CruxExample(id=row["id"], code=row["code"], input=row["input"], output=row["output"])


def as_literal(text: str) -> tuple[bool, Any]:
    """(True, value) when `text` is a Python literal; nothing is evaluated, only parsed."""
    try:
        return True, ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


MAX_ARGS_CHARS = 1 << 16  # an argument list's repr; CRUXEval's gold inputs are under 130 characters


def predicted_args(text: str, output: str) -> tuple[bool, tuple | None]:
    """The argument tuple in an input prediction, the text after "assert f(": "<args>) ==
    <output>" (or just "<args>)"); (False, None) when it is not a literal argument list."""
    text = text.strip()
    for end in (f") == {output}", ") =="):
        if end in text:
            text = text[:text.rindex(end)]
            break
    else:
        text = text.removesuffix(")")
    text = text.strip().removesuffix(",")
    if not text:
        return True, ()
    ok, value = as_literal(f"({text},)")
    if not ok or not isinstance(value, tuple):
        return False, None
    # the check is built with repr(): an int over Python's 4,300-digit conversion limit (a
    # hex literal parses, then repr raises ValueError) or a huge literal is this row's
    # failure, not the task's
    try:
        if len(repr(value)) > MAX_ARGS_CHARS:
            return False, None
    except (ValueError, RecursionError, MemoryError):
        return False, None
    return True, value


def _block(code: str, assertion: str) -> str:
    return f"[PYTHON]\n{code}\nassert {assertion}\n[/PYTHON]\n[ANSWER]\n"


def problem_text(doc: dict, mode: str, shots: bool) -> str:
    """The instruction, the paper's examples (`shots`), and the problem up to "[ANSWER]\\n"."""
    if mode == "output":
        instruction, examples = OUTPUT_INSTRUCTION, OUTPUT_SHOTS
        ask = lambda c, i, o: _block(c, f"f({i}) == ??")  # noqa: E731
        answer = lambda c, i, o: f"assert f({i}) == {o}\n[/ANSWER]\n\n"  # noqa: E731
    else:
        instruction, examples = INPUT_INSTRUCTION, INPUT_SHOTS
        ask = lambda c, i, o: _block(c, f"f(??) == {o}")  # noqa: E731
        answer = lambda c, i, o: f"assert f({i}) == {o}\n[/ANSWER]\n\n"  # noqa: E731
    parts = [instruction + "\n\n"]
    if shots:
        parts += [ask(*ex) + answer(*ex) for ex in examples]
    parts.append(ask(doc["code"], doc["input"], doc["output"]))
    return "".join(parts)


def answer_prefix(doc: dict, mode: str) -> str:
    """The opened answer line: the model writes what follows."""
    return f"assert f({doc['input']}) == " if mode == "output" else "assert f("


def prompt_text(tokenizer, doc: dict, mode: str, chat: bool) -> str:
    """Plain: few-shot text. Chat: the instruction and problem in one user turn (0-shot), the
    assistant's reply opened with [ANSWER] and the answer line."""
    if not chat:
        return problem_text(doc, mode, shots=True) + answer_prefix(doc, mode)
    task = problem_text(doc, mode, shots=False).removesuffix("[ANSWER]\n").rstrip()
    try:
        head = render_prompt(tokenizer, task, True)
    except ValueError as e:
        raise UserError(str(e)) from None
    return head + "[ANSWER]\n" + answer_prefix(doc, mode)


@dataclass
class CruxSettings:
    chat: bool = False
    limit: int | None = None
    sample_seed: int | None = None
    batch_size: int = 8
    max_gen_toks: int = MAX_ANSWER_TOKENS
    limits: ExecLimits = ExecLimits()


class CruxEval(Task):
    name = "cruxeval"
    label = "CRUXEval-O"
    headline = "pass@1"
    mode = "output"
    reference = "gold output"
    item_id = "id"
    data = TaskData(
        label="CRUXEval",
        files={"test": "cruxeval/test.jsonl"},
        fields=("code", "input", "output", "id"),
        parse=parse_row,
        hub=("cruxeval-org/cruxeval", None),
    )

    def validate(self, cfg: EvalConfig) -> None:
        fewshot = cfg.problems.fewshot
        if fewshot is not None and fewshot not in (0, len(OUTPUT_SHOTS)):
            raise UserError(f"{self.label} uses the paper's {len(OUTPUT_SHOTS)} examples "
                            "(plain) or none (--chat); drop --fewshot")
        if cfg.decoding.temperature > 0 or cfg.decoding.samples > 1:
            raise UserError(f"{self.label} is scored greedy, one answer per problem")
        load_task(self.name, self.eval_split)

    def docs(self, limit: int | None, sample_seed: int | None) -> list[dict]:
        examples = load_task(self.name, self.eval_split)
        idx = doc_indices(self.name, limit, sample_seed)
        return [asdict(examples[i]) for i in (idx if idx is not None else range(len(examples)))]

    def reference_pairs(self, tokenizer, docs: list[dict],
                        chat: bool) -> list[tuple[str, str]]:
        return [(prompt_text(tokenizer, d, self.mode, chat),
                 d["output"] if self.mode == "output" else f"{d['input']}) == {d['output']}")
                for d in docs]

    def evaluate(self, lm: LoadedModel, cfg: EvalConfig) -> dict[str, Any]:
        p, d = cfg.problems, cfg.decoding
        s = CruxSettings(p.chat, p.limit, p.sample_seed, d.batch_size,
                         min(d.max_gen_toks, MAX_ANSWER_TOKENS),
                         ExecLimits(timeout_s=cfg.execution.exec_timeout))
        docs = self.docs(s.limit, s.sample_seed)
        texts = [prompt_text(lm.tokenizer, d, self.mode, s.chat) for d in docs]
        ids = [lm.tokenizer(t, add_special_tokens=not s.chat)["input_ids"] for t in texts]
        bar = tqdm(total=len(ids), desc=f"{self.name} generate")
        outs = batched_generate(lm, ids, STOP, s.max_gen_toks, s.batch_size, progress=bar)
        bar.close()
        records = self.score(docs, outs, s, cfg.execution)
        for rec, text in zip(records, texts, strict=True):
            rec["prompt"] = text
        n = len(records)
        return {"task": self.name, "metrics": {"pass@1": sum(r["correct"] for r in records) / n,
                                               "parsed": sum(r["parsed"] for r in records) / n},
                "n": n,
                "settings": {"chat": s.chat, "shots": 0 if s.chat else len(OUTPUT_SHOTS),
                             "limit": s.limit, "sample_seed": s.sample_seed,
                             "ids": [d["id"] for d in docs], "batch_size": s.batch_size,
                             "max_gen_toks": s.max_gen_toks, "decoding": "greedy",
                             "until": STOP, "answer_prefix": answer_prefix(
                                 {"input": "<input>"}, self.mode),
                             **self.scoring_settings(records, s)},
                "records": records}

    def score(self, docs: list[dict], outs: list[str], s: CruxSettings,
              execution: CodeExecution) -> list[dict[str, Any]]:
        """Output prediction: literal == gold literal; no model text is ever run."""
        records = []
        for d, out in zip(docs, outs, strict=True):
            ok, value = as_literal(out)
            gold = ast.literal_eval(d["output"])
            correct = ok and value == gold
            records.append({"id": d["id"], "output": out, "target": d["output"],
                            "parsed": ok, "correct": bool(correct)})
        return records

    def scoring_settings(self, records: list[dict], s: CruxSettings) -> dict[str, Any]:
        return {"scoring": "ast.literal_eval(prediction) == ast.literal_eval(gold output); "
                           "nothing executed"}


class CruxEvalInput(CruxEval):
    name = "cruxeval_i"
    label = "CRUXEval-I"
    mode = "input"
    executes_code = True  # the dataset's f, on arguments the model chose
    reference = "gold input"

    def validate(self, cfg: EvalConfig) -> None:
        require_opt_in(cfg.execution.allow_code_execution)
        super().validate(cfg)

    def score(self, docs: list[dict], outs: list[str], s: CruxSettings,
              execution: CodeExecution) -> list[dict[str, Any]]:
        """Input prediction: the dataset's f runs, contained, on the parsed arguments; the
        check compares its return value (passed back as a literal) with the gold output."""
        require_opt_in(execution.allow_code_execution)
        parsed = [predicted_args(out, d["output"]) for d, out in zip(docs, outs, strict=True)]
        jobs = [({"task_id": d["id"], "prompt": d["code"], "entry_point": "f",
                  # args: values parsed from a literal, so repr() writes plain data back
                  "test": f"def check(candidate):\n    assert candidate(*{args!r}) == "
                          f"{d['output']}\n"}, "")
                for d, (ok, args) in zip(docs, parsed, strict=True) if ok]
        results = iter(run_programs(jobs, s.limits, desc=f"{self.name} execute"))
        records = []
        for d, out, (ok, _) in zip(docs, outs, parsed, strict=True):
            r = next(results) if ok else None
            records.append({"id": d["id"], "output": out, "target": d["input"],
                            "parsed": ok, "correct": bool(r and r["passed"]),
                            "status": r["status"] if r else "not a literal",
                            "result": r["result"] if r else "not a literal argument list",
                            "isolation": r["isolation"] if r else {}})
        return records

    def scoring_settings(self, records: list[dict], s: CruxSettings) -> dict[str, Any]:
        return {"scoring": "the dataset's f run contained on the parsed literal arguments; "
                           "right when f(prediction) == gold output",
                "timeout_s": s.limits.timeout_s, "memory_mb": s.limits.memory_mb,
                "isolation": isolation_summary(records)}


register_task(CruxEval())
register_task(CruxEvalInput())
