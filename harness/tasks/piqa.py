"""PIQA (physical commonsense, validation 1838) through lm-eval's built-in `piqa` task: 0-shot,
two solutions scored by log-likelihood after "Question: <goal>\nAnswer:" (acc, acc_norm).

The local file has no label field: the gold index of row N is line N of `valid-labels.lst`,
joined when loading; lm-eval reads the joined rows (`materialize`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.tasks.base import TaskData, register_task
from harness.tasks.lm_eval_task import LikelihoodTask


@dataclass(frozen=True)
class PiqaExample:
    goal: str
    sol1: str
    sol2: str
    label: int | None = None  # 0 = sol1, 1 = sol2; joined from the labels file


def parse_row(row: dict[str, Any]) -> PiqaExample:
    return PiqaExample(goal=row["goal"], sol1=row["sol1"], sol2=row["sol2"])


class Piqa(LikelihoodTask):
    name = "piqa"
    label = "PIQA"
    headline = "acc"
    yaml_stem = "rad_piqa"
    eval_split = "validation"
    materialize = True  # lm-eval must see the joined label
    data = TaskData(
        label="PIQA",
        files={"validation": "piqa/valid.jsonl"},
        fields=("goal", "sol1", "sol2"),
        parse=parse_row,
        labels={"validation": "piqa/valid-labels.lst"},
        label_values=("0", "1"),
        hub=("baber/piqa", None),  # lm-eval's piqa source: same rows, labels in a column
    )

    def metrics(self, raw: dict[str, Any]) -> dict[str, float]:
        return {"acc": raw["acc,none"], "acc_norm": raw["acc_norm,none"]}

    def plain_pair(self, doc: dict) -> tuple[str, str]:  # lm-eval's piqa doc_to_text
        return f"Question: {doc['goal']}\nAnswer:", " " + doc[f"sol{doc['label'] + 1}"]


register_task(Piqa())
