"""The Task interface and its registry: one module per task registers one `Task` here.

A task's facts (its label, headline metric, whether higher is better, whether it executes model
code) live on its object, once; the runner records them in every run folder, so the report reads
them from JSON. Adding a task = one new module under harness/tasks/ (plus its line in
`harness/tasks/__init__.py`, which imports the task modules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rad.registry import Registry

if TYPE_CHECKING:  # type names only: these modules import this one
    from harness.models import LoadedModel
    from harness.tasks.data import TaskData
    from harness.tasks.evaluate import EvalConfig


class Task:
    name: str  # the registry key and the `--tasks` spelling, e.g. "gsm8k"
    label: str  # for tables and messages, e.g. "GSM8K"
    headline: str  # the metric (key of `evaluate(...)["metrics"]`) a leaderboard shows
    higher_is_better: bool = True
    executes_code: bool = False  # runs model-written programs: needs the explicit opt-in
    data: TaskData  # where its rows live and how they are parsed
    reference: str = "reference solution"  # what fidelity teacher-forces (for the record)

    def validate(self, cfg: EvalConfig) -> None:
        """Everything checkable before a model loads (data, options); UserError otherwise."""

    def evaluate(self, lm: LoadedModel, cfg: EvalConfig) -> dict[str, Any]:
        """The task's entry: metrics, n, settings and per-sample records."""
        raise NotImplementedError

    def docs(self, limit: int | None, sample_seed: int | None) -> list[dict]:
        """The evaluated problems as dicts (fidelity reads them)."""
        raise NotImplementedError

    def reference_pairs(self, tokenizer, docs: list[dict],
                        chat: bool) -> list[tuple[str, str]]:
        """(prompt, reference solution) texts per doc, in the task's 0-shot prompt format."""
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        """What a report needs to know about the task, recorded in the run folder."""
        return {"label": self.label, "headline": self.headline,
                "higher_is_better": self.higher_is_better}


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return TASKS.register(task.name, task)
