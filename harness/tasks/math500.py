"""MATH-500 (500 competition problems) through lm-eval's built-in `minerva_math500` task: 4-shot
Minerva prompt, or 0-shot chain of thought in the chat template (`rad_math500*.yaml`); scored by
math-verify (headline) and exact match."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.tasks.base import TaskData, register_task
from harness.tasks.data import BadRow
from harness.tasks.lm_eval_task import LmEvalTask


@dataclass(frozen=True)
class MathExample:
    problem: str
    solution: str
    answer: str
    subject: str
    level: int


def _parse_level(value: Any) -> int:
    # The hub's MATH-500 uses ints; the original MATH release says "Level 3".
    if isinstance(value, str) and value.removeprefix("Level ").strip().isdecimal():
        value = int(value.removeprefix("Level "))
    if type(value) is not int or not 1 <= value <= 5:
        raise BadRow(f"field 'level' must be an integer 1-5, got {value!r:.40}")
    return value


def parse_row(row: dict[str, Any]) -> MathExample:
    return MathExample(
        problem=row["problem"],
        solution=row["solution"],
        answer=row["answer"],
        subject=row["subject"],
        level=_parse_level(row["level"]),
    )


class Math500(LmEvalTask):
    name = "math500"
    label = "MATH-500"
    headline = "math_verify"
    yaml_stem = "rad_math500"
    data = TaskData(
        label="MATH-500",
        files={"test": "math500/test.jsonl"},
        fields=("problem", "solution", "answer", "subject", "level"),
        loose=("level",),
        parse=parse_row,
        hub=("HuggingFaceH4/MATH-500", None),
    )

    def metrics(self, raw: dict[str, Any]) -> dict[str, float]:
        return {"math_verify": raw["math_verify,none"], "exact_match": raw["exact_match,none"]}

    def fill_record(self, rec: dict[str, Any], sample: dict[str, Any]) -> None:
        # Heavy (sympy, ~2 s to import): only scoring MATH-500 needs it.
        from lm_eval.tasks.minerva_math.utils import (
            get_unnormalized_answer,
            normalize_final_answer,
        )
        rec["extracted"] = normalize_final_answer(get_unnormalized_answer(rec["output"]))
        rec["target"] = sample["doc"]["answer"]
        rec["correct"] = bool(sample["math_verify"])
        rec["exact_match"] = bool(sample["exact_match"])

    def plain_pair(self, doc: dict) -> tuple[str, str]:  # minerva_math doc_to_text
        return f"Problem:\n{doc['problem']}\n\nSolution:", " " + doc["solution"]

    def chat_reference(self, doc: dict) -> str:
        return doc["solution"]


register_task(Math500())
