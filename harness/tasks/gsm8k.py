"""GSM8K (grade-school math, test 1319 / train 7473) through lm-eval's built-in `gsm8k` task:
5-shot from train, or 0-shot chain of thought in the chat template (`rad_gsm8k*.yaml`)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from harness.tasks.base import TaskData, register_task
from harness.tasks.data import BadRow
from harness.tasks.lm_eval_task import LmEvalTask

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, not natural text


@dataclass(frozen=True)
class GSM8KExample:
    question: str
    answer: str  # final number after '####', without commas or whitespace
    solution: str  # full worked solution, '#### <number>' line included


def parse_row(row: dict[str, Any]) -> GSM8KExample:
    """A row whose required string fields are already checked."""
    solution = row["answer"]
    if "####" not in solution:
        raise BadRow("field 'answer' has no '#### <number>' final line")
    answer = "".join(solution.rsplit("####", 1)[1].split()).replace(",", "")
    if not _NUMBER.fullmatch(answer):
        raise BadRow(f"final answer after '####' is not a number: {answer[:40]!r}")
    return GSM8KExample(question=row["question"], answer=answer, solution=solution)


class GSM8K(LmEvalTask):
    name = "gsm8k"
    label = "GSM8K"
    headline = "exact_match_flexible"
    item_correct = "correct_flexible"  # the flexible extraction, as the headline scores
    yaml_stem = "rad_gsm8k"
    reference = "reference solution (GSM8K calculator annotations removed)"
    data = TaskData(
        label="GSM8K",
        files={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
        fields=("question", "answer"),
        parse=parse_row,
        hub=("openai/gsm8k", "main"),
    )

    def metrics(self, raw: dict[str, Any]) -> dict[str, float]:
        return {"exact_match": raw["exact_match,strict-match"],
                "exact_match_flexible": raw["exact_match,flexible-extract"]}

    def fill_record(self, rec: dict[str, Any], sample: dict[str, Any]) -> None:
        key = "" if sample["filter"] == "strict-match" else "_flexible"
        rec["extracted" + key] = sample["filtered_resps"][0]
        rec["correct" + key] = bool(sample["exact_match"])

    def as_doc(self, example: GSM8KExample) -> dict:
        doc = asdict(example)
        doc["answer"] = doc.pop("solution")  # the JSONL field names, as lm-eval sees them
        return doc

    def plain_pair(self, doc: dict) -> tuple[str, str]:  # lm-eval's gsm8k doc_to_text
        return f"Question: {doc['question']}\nAnswer:", " " + _CALC.sub("", doc["answer"])

    def chat_reference(self, doc: dict) -> str:
        return _CALC.sub("", doc["answer"])


register_task(GSM8K())
