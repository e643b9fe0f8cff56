"""Named, hashed prompt sets for diagnosing redundancy, built from training data only.

A spec is `SOURCE:N` (e.g. `gsm8k-train:16`): the first N items of the source, rendered in the
teacher's chat template. Evaluation later uses test splits, so nothing here overlaps with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.common.errors import UserError
from harness.tasks.data import load_task
from rad.digest import json_digest
from rad.registry import Registry
from rad.runtime.prompts import render_prompt


def _gsm8k_train() -> list[str]:
    return [ex.question for ex in load_task("gsm8k", "train")]


# Training-split sources only (HumanEval and MATH-500 have test problems only: not here).
SOURCES: Registry[Callable[[], list[str]]] = Registry("prompt source")
SOURCES.register("gsm8k-train", _gsm8k_train)


@dataclass(frozen=True)
class PromptSet:
    spec: str
    texts: tuple[str, ...]  # exactly what the model sees (chat template applied)

    @property
    def sha256(self) -> str:
        return json_digest(list(self.texts), length=64)


def parse_spec(spec: str) -> tuple[str, int]:
    source, _, count = spec.partition(":")
    if source not in SOURCES:
        raise UserError(f"unknown prompt source {source!r} in {spec!r}; known: "
                        f"{', '.join(SOURCES.names())} (write SOURCE:N)")
    try:
        n = int(count)
    except ValueError:
        raise UserError(f"prompt set {spec!r} needs a count: SOURCE:N, e.g. gsm8k-train:16") \
            from None
    if n < 1:
        raise UserError(f"prompt set {spec!r} is empty; N must be >= 1")
    return source, n


def build_prompt_set(spec: str, tokenizer, chat: bool = True) -> PromptSet:
    source, n = parse_spec(spec)
    items = SOURCES.get(source)()
    if len(items) < n:
        raise UserError(f"prompt set {spec!r}: {source} has only {len(items)} items")
    return PromptSet(spec, tuple(render_prompt(tokenizer, q, chat) for q in items[:n]))
