"""WinoGrande (v1.1 dev, 1267) through lm-eval's built-in `winogrande` task: 0-shot partial
scoring, the sentence up to the blank with each option as the context and the rest of the
sentence as the continuation (acc).

The file's `qID` ends in the answer, so it is dropped when loading and never reaches lm-eval
(lm-eval reads the parsed rows: `materialize`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.tasks.base import TaskData, register_task
from harness.tasks.data import BadRow
from harness.tasks.lm_eval_task import LikelihoodTask


@dataclass(frozen=True)
class WinograndeExample:
    sentence: str  # one "_" marks the blank
    option1: str
    option2: str
    answer: str  # "1" or "2"


def parse_row(row: dict[str, Any]) -> WinograndeExample:
    if row["sentence"].count("_") != 1:
        raise BadRow("field 'sentence' must hold exactly one '_' blank")
    if row["answer"] not in ("1", "2"):
        raise BadRow(f"field 'answer' must be \"1\" or \"2\", got {row['answer'][:20]!r}")
    return WinograndeExample(sentence=row["sentence"], option1=row["option1"],
                             option2=row["option2"], answer=row["answer"])


class Winogrande(LikelihoodTask):
    name = "winogrande"
    label = "WinoGrande"
    headline = "acc"
    yaml_stem = "rad_winogrande"
    eval_split = "validation"
    materialize = True  # without qID
    data = TaskData(
        label="WinoGrande",
        files={"validation": "winogrande/dev.jsonl"},
        fields=("sentence", "option1", "option2", "answer"),
        parse=parse_row,
        hub=("allenai/winogrande", "winogrande_xl"),
    )

    def metrics(self, raw: dict[str, Any]) -> dict[str, float]:
        return {"acc": raw["acc,none"]}

    def plain_pair(self, doc: dict) -> tuple[str, str]:  # lm-eval's partial evaluation
        i = doc["sentence"].index("_")
        option = doc["option1"] if doc["answer"] == "1" else doc["option2"]
        return doc["sentence"][:i] + option, " " + doc["sentence"][i + 1:].strip()


register_task(Winogrande())
