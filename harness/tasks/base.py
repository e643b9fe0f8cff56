"""The Task interface and its registry: one module per task registers one `Task` here, with
the `TaskData` that says where its rows live and the `EvalConfig` it is evaluated under.

A task's facts (its label, headline metric, whether higher is better, whether it executes model
code) live on its object, once; the runner records them in every run folder, so the report reads
them from JSON. Adding a task = one new module under harness/tasks/ (plus its line in
`harness/tasks/__init__.py`, which imports the task modules).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.common.errors import UserError
from harness.common.files import cache_dir
from harness.models import LoadedModel
from rad.registry import Registry

DATA_HINT = (
    "set RAD_DATA_DIR to a folder holding the task data (e.g. ../shared/data, see its "
    "README) or run 'rad data fetch' where a network exists"
)


def data_dir() -> Path:
    """`$RAD_DATA_DIR`, else `cache_dir()/data` (where `fetch` writes)."""
    return Path(os.environ.get("RAD_DATA_DIR") or cache_dir() / "data").expanduser()


@dataclass(frozen=True)
class TaskData:
    """Where a task's rows live and how each is checked and parsed."""
    label: str  # for messages: "GSM8K"
    files: dict[str, str]  # split -> path relative to root()
    fields: tuple[str, ...]  # required keys of every row; strings unless listed in `loose`
    parse: Callable[[dict[str, Any]], Any]  # row -> the task's parsed example
    hub: tuple[str, str | None] | None = None  # (dataset, config) for fetch; None: bundled
    root: Callable[[], Path] | None = None  # None: data_dir()
    missing_hint: str = DATA_HINT
    loose: tuple[str, ...] = ()  # required fields of other types; the parser checks them
    # split -> a file of gold labels, one a line, line N for row N (PIQA ships them apart);
    # each becomes the example's `label` (an int from `label_values`)
    labels: dict[str, str] | None = None
    label_values: tuple[str, ...] = ()

    def path(self, split: str) -> Path:
        return (self.root or data_dir)() / self.files[split]

    def labels_path(self, split: str) -> Path | None:
        rel = (self.labels or {}).get(split)
        return None if rel is None else (self.root or data_dir)() / rel


@dataclass(frozen=True)
class Problems:
    """Which problems each task scores, and in which prompt format."""
    limit: int | None = None  # the first N (file order), or N drawn with sample_seed
    task_limits: dict[str, int] = field(default_factory=dict)  # per-task overrides of limit
    sample_seed: int | None = None
    fewshot: int | None = None  # None: the task's own count
    chat: bool = False  # 0-shot in the model's chat template


@dataclass(frozen=True)
class Decoding:
    """How answers are decoded: batching and length, HumanEval's sampling for pass@k, and the
    speculative pass that measures the acceptance rate (with a teacher)."""
    batch_size: int = 8
    max_gen_toks: int = 256
    samples: int = 1  # HumanEval completions per problem
    temperature: float = 0.0
    pass_k: list[int] = field(default_factory=lambda: [1])
    seed: int = 0  # sampling seed
    gamma: int = 4  # draft length of the acceptance pass
    spec_tokens: int = 64  # new tokens per prompt in the acceptance pass


@dataclass(frozen=True)
class CodeExecution:
    """Running model-written code (HumanEval, CRUXEval-I): the explicit opt-in, the time limit."""
    allow_code_execution: bool = False
    exec_timeout: float = 3.0  # seconds per program


@dataclass(frozen=True)
class EvalConfig:
    """The settings of one `rad eval` run: what is evaluated where, plus one config per concern;
    every task reads what applies to it."""
    model: str | None  # None only with from_samples
    tasks: list[str]
    problems: Problems = field(default_factory=Problems)
    decoding: Decoding = field(default_factory=Decoding)
    execution: CodeExecution = field(default_factory=CodeExecution)
    teacher: str | None = None
    fidelity: bool = False  # fidelity to `teacher`
    dtype: str = "fp32"
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    json_path: Path | None = None
    from_samples: Path | None = None  # score this samples file instead of generating


class Task:
    name: str  # the registry key and the `--tasks` spelling, e.g. "gsm8k"
    label: str  # for tables and messages, e.g. "GSM8K"
    headline: str  # the metric (key of `evaluate(...)["metrics"]`) a leaderboard shows
    higher_is_better: bool = True
    executes_code: bool = False  # runs code on model output: needs the explicit opt-in
    generates: bool = True  # False: scored by log-likelihood alone (no decoding)
    data: TaskData  # where its rows live and how they are parsed
    eval_split: str = "test"  # the split scored (PIQA and WinoGrande: their validation set)
    reference: str = "reference solution"  # what fidelity teacher-forces (for the record)
    # Per-sample records (the samples file): the key naming the problem, and the key saying
    # whether the headline metric counted it right. Paired statistics read these.
    item_id: str
    item_correct: str = "correct"

    def validate(self, cfg: EvalConfig) -> None:
        """Everything checkable before a model loads (data, options); UserError otherwise."""

    def evaluate(self, lm: LoadedModel, cfg: EvalConfig) -> dict[str, Any]:
        """The task's entry: metrics, n, settings and per-sample records."""
        raise NotImplementedError

    def score_samples(self, cfg: EvalConfig) -> dict[str, Any]:
        """Like `evaluate`, on the outputs in `cfg.from_samples` (no model)."""
        raise UserError(f"{self.label} cannot score a samples file (--from-samples); "
                        "it generates its own answers")

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
