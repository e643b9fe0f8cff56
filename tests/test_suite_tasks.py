"""The tasks with signal at small scale: PIQA, WinoGrande, LAMBADA through lm-eval's
built-in definitions on local rows, CRUXEval-O / -I, on tiny-random and on real rows."""

from __future__ import annotations

import dataclasses
import json
from itertools import islice
from pathlib import Path

import pytest
from tiny_models import one_line_message, shared_data

from harness.cli import main
from harness.common.errors import DataError, UserError
from harness.experiment.config import config_from_dict, load_config
from harness.tasks import cruxeval
from harness.tasks.base import TASKS, CodeExecution
from harness.tasks.batching import score_continuations
from harness.tasks.cruxeval import CruxSettings, as_literal, predicted_args, prompt_text
from harness.tasks.data import load_task
from harness.tasks.lm_backend import RadLM
from harness.tasks.lm_eval_task import LmEvalSettings, run_lm_eval_task

FILES = {"piqa": [("piqa/valid.jsonl", 6), ("piqa/valid-labels.lst", 6)],
         "winogrande": [("winogrande/dev.jsonl", 6)],
         "lambada_openai": [("lambada_openai/test.jsonl", 6)],
         "cruxeval": [("cruxeval/test.jsonl", 6)]}


pytestmark = pytest.mark.usefixtures("fast_tiny_models")


@pytest.fixture
def rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder with the first rows of each new task's shipped files."""
    shared = shared_data()
    if not (shared / "piqa" / "valid.jsonl").is_file():
        pytest.skip(f"task data not found under {shared}")
    for files in FILES.values():
        for rel, n in files:
            dest = tmp_path / "data" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(shared / rel, encoding="utf-8") as f:
                dest.write_text("".join(islice(f, n)), encoding="utf-8")
    monkeypatch.setenv("RAD_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


# -- loaders -------------------------------------------------------------------------------------
def test_piqa_labels_joined_line_by_line(rows: Path):
    labels = (rows / "piqa/valid-labels.lst").read_text().split()
    goals = [json.loads(x)["goal"] for x in (rows / "piqa/valid.jsonl").read_text().splitlines()]
    examples = load_task("piqa", "validation")
    assert [e.label for e in examples] == [int(x) for x in labels]
    assert [e.goal for e in examples] == goals


@pytest.mark.parametrize("labels, problem", [
    ("0\n1\n2\n0\n1\n0\n", "valid-labels.lst:3: label must be one of 0, 1"),
    ("0\n1\n0\n", "holds 3 labels for the 6 rows"),
])
def test_piqa_bad_labels_name_the_file_and_line(rows: Path, labels: str, problem: str):
    (rows / "piqa/valid-labels.lst").write_text(labels)
    with pytest.raises(DataError) as err:
        load_task("piqa", "validation")
    assert problem in one_line_message(err)


def test_piqa_missing_labels_file(rows: Path):
    (rows / "piqa/valid-labels.lst").unlink()
    with pytest.raises(DataError, match="PIQA labels not found"):
        load_task("piqa", "validation")


@pytest.mark.parametrize("task, rel, row, problem", [
    ("winogrande", "winogrande/dev.jsonl",
     {"qID": "x-1", "sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"},
     "exactly one '_' blank"),
    ("winogrande", "winogrande/dev.jsonl",
     {"qID": "x-1", "sentence": "a _ b", "option1": "a", "option2": "b", "answer": "3"},
     "must be \"1\" or \"2\""),
    ("lambada_openai", "lambada_openai/test.jsonl", {"text": "word"}, "a context and a last"),
    ("cruxeval", "cruxeval/test.jsonl",
     {"code": "def f(x):\n    return x", "input": "1", "output": "f(1)", "id": "s"},
     "'output' is not a Python literal"),
    ("cruxeval", "cruxeval/test.jsonl",
     {"code": "x = 1", "input": "1", "output": "1", "id": "s"}, "does not define f"),
    ("piqa", "piqa/valid.jsonl", {"goal": "g", "sol1": "a"}, "missing field(s) 'sol2'"),
])
def test_malformed_rows_name_file_and_line(rows: Path, task, rel, row, problem):
    path = rows / rel
    lines = path.read_text().splitlines()
    lines[3] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    split = TASKS.get(task).eval_split
    with pytest.raises(DataError) as err:
        load_task(task, split)
    assert f"{path}:4: " in one_line_message(err) and problem in str(err.value)


def test_real_rows_load_in_full(monkeypatch: pytest.MonkeyPatch):
    shared = shared_data()
    if not (shared / "piqa" / "valid.jsonl").is_file():
        pytest.skip("no shared data")
    monkeypatch.setenv("RAD_DATA_DIR", str(shared))
    counts = {"piqa": 1838, "winogrande": 1267, "lambada_openai": 5153, "cruxeval": 800}
    for task, n in counts.items():
        assert len(load_task(task, TASKS.get(task).eval_split)) == n


# -- the likelihood tasks through lm-eval ------------------------------------------------------
def _our_choice_scores(tiny, pairs):
    return score_continuations(tiny.model, pairs, tiny.pad_token_id, batch_size=3)


def test_likelihood_tasks_on_tiny_random_match_our_own_scoring(tiny, rows):
    """lm-eval's acc through our backend = the argmax of our own log-likelihoods of the task's
    choices, built from the documents as lm-eval's YAMLs define them."""
    tok = tiny.tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    for task in ("piqa", "winogrande", "lambada_openai"):
        res = run_lm_eval_task(tiny, task, LmEvalSettings(chat=True, limit=5, batch_size=2))
        assert res["n"] == 5 and res["settings"]["chat"] is False  # scored without a template
        assert res["settings"]["num_fewshot"] == 0
        docs = TASKS.get(task).docs(5, None)
        for rec, doc in zip(res["records"], docs, strict=True):
            if task == "piqa":
                ctx = f"Question: {doc['goal']}\nAnswer:"
                pairs = [(enc(ctx), enc(" " + doc[s])) for s in ("sol1", "sol2")]
                gold = doc["label"]
            elif task == "winogrande":
                i = doc["sentence"].index("_")
                rest = " " + doc["sentence"][i + 1:].strip()
                pairs = [(enc(doc["sentence"][:i] + o), enc(rest))
                         for o in (doc["option1"], doc["option2"])]
                gold = int(doc["answer"]) - 1
            else:
                words = doc["text"].split(" ")
                pairs = [(enc(" ".join(words[:-1])), enc(" " + words[-1]))]
                gold = None
            ours = _our_choice_scores(tiny, pairs)
            assert rec["output"] == pytest.approx([lp for lp, _ in ours], abs=1e-3)
            if gold is None:
                assert rec["correct"] == ours[0][1]  # LAMBADA acc: greedy reproduces the word
            else:
                assert rec["choice"] == max(range(2), key=lambda j: ours[j][0])
                assert rec["correct"] == (rec["choice"] == gold)
        assert res["metrics"]["acc"] == sum(r["correct"] for r in res["records"]) / 5


def test_winogrande_never_shows_qid(tiny, rows):
    qids = [json.loads(x)["qID"] for x in (rows / "winogrande/dev.jsonl").read_text().split("\n")
            if x]
    seen = []

    class Spy(RadLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            seen.extend(json.dumps(r.args) + json.dumps(r.doc) for r in requests)
            return super().loglikelihood(requests, disable_tqdm)

    res = run_lm_eval_task(tiny, "winogrande", LmEvalSettings(limit=6),
                           backend=Spy(loaded=tiny))
    assert res["n"] == 6 and len(seen) == 12
    text = "".join(seen) + json.dumps(res["records"])
    assert not any(q in text for q in qids)
    assert "qID" not in text


def test_likelihood_tasks_refuse_fewshot(rows):
    assert main(["eval", "--model", "tiny-random", "--tasks", "piqa", "--fewshot", "2"]) == 2


# -- CRUXEval ----------------------------------------------------------------------------------
DOC = {"id": "t", "code": "def f(x):\n    return x % 2", "input": "3", "output": "1"}


def test_output_prediction_is_parsed_never_run():
    task = TASKS.get("cruxeval")
    docs = [{"id": "a", "code": "def f(s):\n    return s + 'a'", "input": "'x9j'",
             "output": "'x9ja'"}] * 5
    outs = ["'x9ja'", "\"x9ja\"", "'x9j' + 'a'", "__import__('os').system('true')", "x9ja"]
    recs = task.score(docs, outs, CruxSettings(), None)
    assert [r["correct"] for r in recs] == [True, True, False, False, False]
    assert [r["parsed"] for r in recs] == [True, True, False, False, False]


def test_output_prediction_hand_checked_real_items(rows):
    """sample_0: f counts then sorts (count, n) pairs; its gold output, a near miss and the
    literal with different spacing."""
    task = TASKS.get("cruxeval")
    doc = task.docs(1, None)[0]
    assert doc["id"] == "sample_0"
    outs = ["[(4, 1), (4, 1), (4, 1), (4, 1), (2, 3), (2, 3)]",
            "[(4, 1), (4, 1), (4, 1), (4, 1), (2, 3)]", "[(4,1),(4,1),(4,1),(4,1),(2,3),(2,3)]"]
    recs = task.score([doc] * 3, outs, CruxSettings(), None)
    assert [r["correct"] for r in recs] == [True, False, True]


def test_input_prediction_runs_the_datasets_function_contained():
    task = TASKS.get("cruxeval_i")
    cfg = CodeExecution(allow_code_execution=True)
    outs = ["3) == 1", "5)", "2) == 1", "'a') == 1", "__import__('os').getpid()) == 1", ""]
    recs = task.score([DOC] * 6, outs, CruxSettings(), cfg)
    assert [r["correct"] for r in recs] == [True, True, False, False, False, False]
    assert [r["parsed"] for r in recs] == [True, True, True, True, False, True]
    assert recs[3]["result"] == "the program raised TypeError"  # 'a' % 2: f ran, and failed
    assert recs[4]["status"] == "not a literal"  # model text is never executed


def test_input_prediction_hand_checked_real_items(rows):
    task = TASKS.get("cruxeval_i")
    docs = task.docs(3, None)
    cfg = CodeExecution(allow_code_execution=True)
    gold = [f"{d['input']}) == {d['output']}" for d in docs]
    assert all(r["correct"] for r in task.score(docs, gold, CruxSettings(), cfg))
    # sample_1: f(a, b, c) returns dict.fromkeys over its three lists: {1: None, 2: None}
    other = "(1,), (2,), (1, 2)) == {1: None, 2: None}"
    assert docs[1]["id"] == "sample_1"
    assert task.score([docs[1]], [other], CruxSettings(), cfg)[0]["correct"]


def test_input_prediction_needs_the_opt_in(monkeypatch):
    monkeypatch.delenv("RAD_ALLOW_CODE_EXECUTION", raising=False)
    with pytest.raises(UserError, match="CRUXEval-I"):
        TASKS.get("cruxeval_i").score([DOC], ["3)"], CruxSettings(),
                                      CodeExecution(allow_code_execution=False))


def test_predicted_args_parsing():
    assert predicted_args('"ba", "nana") == "banana"', '"banana"') == (True, ("ba", "nana"))
    assert predicted_args("[1, 2])", "3") == (True, ([1, 2],))
    assert predicted_args(") == 3", "3") == (True, ())
    assert predicted_args("1,) == 2", "2") == (True, (1,))
    assert predicted_args("x) == 2", "2") == (False, None)
    assert as_literal(" {'a': (1, 2)} ") == (True, {"a": (1, 2)})
    # oversized literals are that row's failure: a hex int past the 4,300-digit repr limit
    # (it parses, then repr raises ValueError) and a list whose repr passes the cap
    assert predicted_args("0x" + "f" * 4000 + ") == 1", "1") == (False, None)
    assert predicted_args("[0] * 1,) == 1", "1") == (False, None)  # not a literal at all
    assert predicted_args("[" + "1, " * 30000 + "]) == 1", "1") == (False, None)
    assert predicted_args("0x" + "f" * 100 + ") == 1", "1")[0]


@pytest.mark.parametrize("mode", ["output", "input"])
def test_prompt_shapes(tiny, mode):
    doc = {"id": "t", "code": "def f(n):\n    return n * 2", "input": "21", "output": "42"}
    plain = prompt_text(tiny.tokenizer, doc, mode, chat=False)
    assert plain.count("\n[PYTHON]\n") == 3 and plain.count("\n[/ANSWER]\n") == 2  # 2 shots
    assert plain.endswith("[ANSWER]\nassert f(21) == " if mode == "output"
                          else "[ANSWER]\nassert f(")
    shown = "f(21) == ??" if mode == "output" else "f(??) == 42"
    assert shown in plain and ("42" not in plain.split("[PYTHON]")[-1]) == (mode == "output")


@pytest.mark.parametrize("chat", [False, True])
def test_cruxeval_on_tiny_random_end_to_end(tiny, rows, tmp_path, chat):
    out = tmp_path / "ev.json"
    args = ["eval", "--model", "tiny-random", "--tasks", "cruxeval,cruxeval_i", "--limit", "3",
            "--batch-size", "2", "--max-gen-toks", "4", "--allow-code-execution",
            "--json", str(out)] + (["--chat"] if chat else [])
    assert main(args) == 0
    res = json.loads(out.read_text())
    for task in ("cruxeval", "cruxeval_i"):
        entry = res["tasks"][task]
        assert entry["n"] == 3 and set(entry["metrics"]) == {"pass@1", "parsed"}
        assert entry["settings"]["shots"] == (0 if chat else 2)
        recs = [json.loads(x) for x in (tmp_path / entry["samples_file"]).read_text().split("\n")
                if x]
        assert [r["id"] for r in recs] == ["sample_0", "sample_1", "sample_2"]
        assert all({"prompt", "output", "target", "parsed", "correct"} <= set(r) for r in recs)
        assert entry["metrics"]["pass@1"] == sum(r["correct"] for r in recs) / 3
        assert ("<|im_start|>assistant" in recs[0]["prompt"]) == chat


def test_cruxeval_refuses_sampling(rows):
    assert main(["eval", "--model", "tiny-random", "--tasks", "cruxeval", "--samples", "2",
                 "--temperature", "0.5"]) == 2


def test_module_has_no_exec_of_model_text():
    """CRUXEval-O's scorer only parses: no eval/exec/compile anywhere in the module."""
    src = Path(cruxeval.__file__).read_text()
    assert "eval(" not in src.replace("literal_eval(", "") and "exec(" not in src


# -- the cpu profile's sizes ----------------------------------------------------------------------
def test_cpu_profile_is_sized_for_power():
    """The floor that makes the accuracy claims decidable (MDE ~0.04 on the pooled suite, see
    results/cpu/LEADERBOARD.md): every likelihood task on >= 500 items, CRUXEval-O on >= 200,
    the paper's generation tasks kept."""
    e = load_config("cpu").eval
    n = {t: e.limits.get(t, e.limit) for t in e.tasks}
    assert all(n[t] >= 500 for t in ("piqa", "winogrande", "lambada_openai"))
    assert n["cruxeval"] >= 200
    assert {"gsm8k", "math500", "humaneval"} <= set(e.tasks)


def test_per_task_limits_are_validated():
    cfg = dataclasses.asdict(load_config("smoke"))
    cfg["eval"]["limits"] = {"piqa": 0}
    with pytest.raises(UserError, match="eval.limits.piqa must be >= 1"):
        config_from_dict(cfg)
    cfg["eval"]["limits"] = {"hellaswag": 5}
    with pytest.raises(UserError, match="not in eval.tasks"):
        config_from_dict(cfg)
