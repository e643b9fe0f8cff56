"""Tests for harness.tasks.data: shipped files, strict parsing, missing data, fetch and check."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tiny_models import one_line_message, shared_data

from harness.common.errors import DataError
from harness.common.files import cache_dir
from harness.tasks import base, data
from harness.tasks.data import check, fetch, file_sha256, load_task
from harness.tasks.gsm8k import GSM8KExample
from harness.tasks.humaneval import HumanEvalExample
from harness.tasks.math500 import MathExample

GOOD_GSM8K = {"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"}
GOOD_MATH = {
    "problem": "1+1?",
    "solution": "$\\boxed{2}$",
    "answer": "2",
    "subject": "Algebra",
    "level": 1,
}


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the real cache, and forget earlier auto-fetch attempts."""
    monkeypatch.setenv("RAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_fetch_tried", set())


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> Path:
    root = shared_data()
    if not root.is_dir():
        pytest.skip(f"shipped data folder {root} not found; set RAD_DATA_DIR to ../shared/data")
    monkeypatch.setenv("RAD_DATA_DIR", str(root))
    return root


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("RAD_DATA_DIR", str(root))
    return root


def fake_hub(rows: dict[tuple[str, str], list[dict[str, Any]]], calls: list[tuple]) -> Any:
    """A stand-in for datasets.load_dataset serving in-memory rows."""

    def load_dataset(path: str, name: str | None = None, *, split: str) -> list[dict[str, Any]]:
        calls.append((path, name, split))
        if (path, split) not in rows:
            raise ConnectionError("Couldn't reach 'huggingface.co'\n(offline)")
        return rows[(path, split)]

    return load_dataset


HUB_ROWS = {
    ("openai/gsm8k", "train"): [GOOD_GSM8K, {**GOOD_GSM8K, "answer": "big\n#### 1,234"}],
    ("openai/gsm8k", "test"): [GOOD_GSM8K],
    # The hub has extra columns; fetch keeps only the task's fields.
    ("HuggingFaceH4/MATH-500", "test"): [{**GOOD_MATH, "unique_id": "test/algebra/1.json"}],
}


# --- shipped data -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "split", "count", "kind"),
    [
        ("gsm8k", "test", 1319, GSM8KExample),
        ("gsm8k", "train", 7473, GSM8KExample),
        ("math500", "test", 500, MathExample),
        ("humaneval", "test", 164, HumanEvalExample),
    ],
)
def test_shipped_counts(shipped: Path, task: str, split: str, count: int, kind: type) -> None:
    examples = load_task(task, split)
    assert len(examples) == count
    assert all(type(ex) is kind for ex in examples)


@pytest.mark.parametrize("split", ["train", "test"])
def test_shipped_gsm8k_answers_are_numbers(shipped: Path, split: str) -> None:
    for ex in load_task("gsm8k", split):
        float(ex.answer)  # raises on anything that is not a plain number
        assert "," not in ex.answer and ex.answer.strip() == ex.answer
        assert "####" in ex.solution
    first = load_task("gsm8k", "test")[0]
    assert first.question.startswith("Janet") and first.answer == "18"


def test_shipped_math_levels(shipped: Path) -> None:
    examples = load_task("math500")
    assert {ex.level for ex in examples} == {1, 2, 3, 4, 5}
    assert all(ex.problem and ex.answer and ex.subject for ex in examples)


def test_humaneval_ids(shipped: Path) -> None:
    examples = load_task("humaneval")
    assert [ex.task_id for ex in examples] == [f"HumanEval/{i}" for i in range(164)]
    assert all(f"def {ex.entry_point}" in ex.prompt for ex in examples)


def test_check_reports_counts(shipped: Path) -> None:
    assert check() == [
        ("gsm8k", "train", 7473, None),
        ("gsm8k", "test", 1319, None),
        ("math500", "test", 500, None),
        ("humaneval", "test", 164, None),
        ("cruxeval", "test", 800, None),
        ("cruxeval_i", "test", 800, None),
        ("piqa", "validation", 1838, None),
        ("winogrande", "validation", 1267, None),
        ("lambada_openai", "test", 5153, None),
    ]


# --- strict parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"question": "q", "answer": "#### 1"', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"question": "q"}', "'answer'"),
        ('{"question": "q", "answer": "it is 42"}', "####"),
        ('{"question": "q", "answer": "#### forty"}', "not a number"),
        ('{"question": 3, "answer": "#### 1"}', "'question' must be a string"),
    ],
)
def test_bad_gsm8k_line(data_root: Path, bad_line: str, problem: str) -> None:
    write_jsonl(data_root / "gsm8k/test.jsonl", [json.dumps(GOOD_GSM8K), "", bad_line])
    with pytest.raises(DataError) as err:
        load_task("gsm8k", "test")
    message = one_line_message(err)
    assert f"{data_root / 'gsm8k/test.jsonl'}:3:" in message
    assert problem in message


@pytest.mark.parametrize("level", [0, 6, "hard", True, None])
def test_bad_math_level(data_root: Path, level: Any) -> None:
    write_jsonl(data_root / "math500/test.jsonl", [json.dumps({**GOOD_MATH, "level": level})])
    with pytest.raises(DataError) as err:
        load_task("math500")
    assert "test.jsonl:1:" in one_line_message(err) and "level" in str(err.value)


def test_blank_lines_skipped_and_answers_normalised(data_root: Path) -> None:
    rows = [GOOD_GSM8K, {"question": "Big?", "answer": "work\n#### 1,234 "}]
    write_jsonl(
        data_root / "gsm8k/test.jsonl", ["", json.dumps(rows[0]), "   ", json.dumps(rows[1])]
    )
    examples = load_task("gsm8k")
    assert [ex.answer for ex in examples] == ["4", "1234"]
    assert examples[1].solution == "work\n#### 1,234 "
    write_jsonl(data_root / "math500/test.jsonl", [json.dumps({**GOOD_MATH, "level": "Level 3"})])
    assert load_task("math500")[0].level == 3


def test_empty_file_is_an_error(data_root: Path) -> None:
    write_jsonl(data_root / "gsm8k/test.jsonl", ["", ""])
    with pytest.raises(DataError, match="no examples"):
        load_task("gsm8k")


@pytest.mark.parametrize(("task", "split"), [("nope", "test"), ("math500", "train")])
def test_unknown_task_or_split(task: str, split: str) -> None:
    with pytest.raises(DataError) as err:
        load_task(task, split)
    message = one_line_message(err)
    assert (
        ("gsm8k, humaneval, lambada_openai, math500, piqa" in message) if task == "nope"
        else ("splits: test" in message)
    )


# --- missing data and auto-fetch --------------------------------------------------------------


def test_missing_file_with_data_dir_set_does_not_fetch(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "fetch", lambda *a, **k: pytest.fail("fetch must not be called"))
    with pytest.raises(DataError) as err:
        load_task("gsm8k", "test")
    message = one_line_message(err)
    assert message.startswith(f"GSM8K test data not found at {data_root / 'gsm8k/test.jsonl'};")
    assert "RAD_DATA_DIR" in message and "rad data fetch" in message


def test_auto_fetch_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.delenv("RAD_DATA_DIR", raising=False)
    calls: list[tuple] = []
    monkeypatch.setattr(datasets, "load_dataset", fake_hub(HUB_ROWS, calls))
    assert [ex.answer for ex in load_task("gsm8k", "train")] == ["4", "1234"]
    assert (tmp_path / "cache/data/gsm8k/test.jsonl").is_file()
    assert sorted(calls) == [("openai/gsm8k", "main", "test"), ("openai/gsm8k", "main", "train")]
    load_task("gsm8k", "test")
    assert len(calls) == 2  # already on disk: no second download


def test_auto_fetch_failure_is_missing_error_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.delenv("RAD_DATA_DIR", raising=False)
    calls: list[tuple] = []
    monkeypatch.setattr(datasets, "load_dataset", fake_hub({}, calls))
    for _ in range(2):
        with pytest.raises(DataError) as err:
            load_task("math500")
        message = one_line_message(err)
        assert "MATH-500 test data not found at" in message and "RAD_DATA_DIR" in message
    assert calls == [("HuggingFaceH4/MATH-500", None, "test")]  # the network is tried once
    assert not (tmp_path / "cache/data/math500").exists()


# --- fetch ------------------------------------------------------------------------------------


def test_fetch_writes_loadable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_hub(HUB_ROWS, []))
    dest = tmp_path / "fetched"
    written = fetch(dest=dest)
    expected = {dest / "gsm8k/train.jsonl", dest / "gsm8k/test.jsonl", dest / "math500/test.jsonl"}
    assert set(written) == expected
    assert {p for p in dest.rglob("*") if p.is_file()} == expected  # no temp files left
    math_row = json.loads((dest / "math500/test.jsonl").read_text())
    assert math_row == GOOD_MATH  # extra hub columns dropped
    monkeypatch.setenv("RAD_DATA_DIR", str(dest))
    assert load_task("math500") == [MathExample(**GOOD_MATH)]
    assert [ex.answer for ex in load_task("gsm8k", "train")] == ["4", "1234"]


def test_fetch_default_dest_is_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_hub(HUB_ROWS, []))
    assert fetch("math500") == [tmp_path / "cache/data/math500/test.jsonl"]


def test_fetch_failure_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    # gsm8k/test downloads fine but train fails: nothing at all may be written.
    rows = {k: v for k, v in HUB_ROWS.items() if k != ("openai/gsm8k", "train")}
    monkeypatch.setattr(datasets, "load_dataset", fake_hub(rows, []))
    dest = tmp_path / "fetched"
    with pytest.raises(DataError) as err:
        fetch(dest=dest)
    message = one_line_message(err)
    assert "could not download GSM8K train" in message and "no network?" in message
    assert "RAD_DATA_DIR" in message
    assert not dest.exists() or not any(dest.rglob("*"))


def test_fetch_rejects_bad_hub_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    bad = {("HuggingFaceH4/MATH-500", "test"): [{**GOOD_MATH, "level": 9}]}
    monkeypatch.setattr(datasets, "load_dataset", fake_hub(bad, []))
    with pytest.raises(DataError) as err:
        fetch(["math500"], dest=tmp_path / "fetched")
    assert "row 0" in one_line_message(err)
    assert not (tmp_path / "fetched").exists()


@pytest.mark.parametrize("task", ["humaneval", "nope"])
def test_fetch_unfetchable_task(tmp_path: Path, task: str) -> None:
    with pytest.raises(DataError) as err:
        fetch([task], dest=tmp_path)
    message = one_line_message(err)
    assert repr(task) in message and "gsm8k" in message and "math500" in message


# --- check, paths, hashing --------------------------------------------------------------------


def test_check_reports_missing_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAD_DATA_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(data, "fetch", lambda *a, **k: pytest.fail("check must not download"))
    report = {(task, split): (count, error) for task, split, count, error in check()}
    local = [("gsm8k", "train"), ("gsm8k", "test"), ("math500", "test"), ("cruxeval", "test"),
             ("cruxeval_i", "test"), ("piqa", "validation"), ("winogrande", "validation"),
             ("lambada_openai", "test")]
    assert set(report) == {*local, ("humaneval", "test")}
    for key in local:
        count, error = report[key]
        assert count is None and error is not None
        assert str(tmp_path / "absent") in error and "\n" not in error
    assert report[("humaneval", "test")] == (164, None)  # bundled with its package


def test_dirs_follow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAD_DATA_DIR", raising=False)
    assert base.data_dir() == tmp_path / "cache" / "data"
    monkeypatch.delenv("RAD_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "rad-harness"
    monkeypatch.setenv("RAD_DATA_DIR", str(tmp_path / "d"))
    assert data.task_path("gsm8k", "train") == tmp_path / "d" / "gsm8k" / "train.jsonl"


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    payload = os.urandom(3 << 20)  # several read chunks
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()
    (tmp_path / "abc").write_bytes(b"abc")
    assert file_sha256(tmp_path / "abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_fetch_piqa_writes_the_labels_file_apart(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's PIQA has a label column; the fetched layout is the local one (rows without
    labels, labels one a line), so it loads and joins like ../shared/data."""
    import datasets

    rows = [{"goal": f"g{i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(3)]
    monkeypatch.setattr(datasets, "load_dataset", fake_hub({("baber/piqa", "validation"): rows},
                                                           []))
    dest = tmp_path / "fetched"
    written = fetch("piqa", dest=dest)
    assert set(written) == {dest / "piqa/valid.jsonl", dest / "piqa/valid-labels.lst"}
    assert (dest / "piqa/valid-labels.lst").read_text() == "0\n1\n0\n"
    assert "label" not in (dest / "piqa/valid.jsonl").read_text()
    monkeypatch.setenv("RAD_DATA_DIR", str(dest))
    assert [e.label for e in load_task("piqa", "validation")] == [0, 1, 0]
    bad = [{**rows[0], "label": 2}]
    monkeypatch.setattr(datasets, "load_dataset", fake_hub({("baber/piqa", "validation"): bad},
                                                           []))
    with pytest.raises(DataError, match="row 0: label must be one of 0, 1"):
        fetch("piqa", dest=tmp_path / "other")
    assert not (tmp_path / "other").exists()
