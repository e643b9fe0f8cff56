"""LAMBADA (OpenAI's detokenised test, 5153) through lm-eval's built-in `lambada_openai` task:
the passage without its last word as context, " <last word>" as the continuation; acc (greedy
decoding would produce the whole word) and perplexity of the word."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.tasks.base import TaskData, register_task
from harness.tasks.data import BadRow
from harness.tasks.lm_eval_task import LikelihoodTask


@dataclass(frozen=True)
class LambadaExample:
    text: str


def parse_row(row: dict[str, Any]) -> LambadaExample:
    if len(row["text"].split(" ")) < 2:
        raise BadRow("field 'text' needs a context and a last word")
    return LambadaExample(text=row["text"])


class LambadaOpenAI(LikelihoodTask):
    name = "lambada_openai"
    label = "LAMBADA"
    headline = "acc"
    yaml_stem = "rad_lambada_openai"
    data = TaskData(
        label="LAMBADA",
        files={"test": "lambada_openai/test.jsonl"},
        fields=("text",),
        parse=parse_row,
        hub=("EleutherAI/lambada_openai", "default"),
    )

    def metrics(self, raw: dict[str, Any]) -> dict[str, float]:
        return {"acc": raw["acc,none"], "perplexity": raw["perplexity,none"]}

    def plain_pair(self, doc: dict) -> tuple[str, str]:  # lm-eval's doc_to_text / target
        words = doc["text"].split(" ")
        return " ".join(words[:-1]), " " + words[-1]


register_task(LambadaOpenAI())
