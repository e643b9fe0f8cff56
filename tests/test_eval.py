"""Evaluation: the lm-eval backend, the shipped task configs, HumanEval's contained
execution, fidelity metrics, two-model speculative decoding and `rad eval`. All on tiny-random
and a few local rows."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import islice
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import VOCAB, pair, shared_data

from harness.cli import main
from harness.common.errors import UserError
from harness.models import load_model
from harness.tasks import data as task_data
from harness.tasks import lm_eval_task as eval_tasks
from harness.tasks.batching import batched_generate, score_continuations
from harness.tasks.humaneval import (
    HumanEvalSettings,
    evaluate_humaneval,
    pass_at_k,
)
from harness.tasks.lm_backend import RadLM
from harness.tasks.lm_eval_task import LmEvalSettings, run_lm_eval_task
from harness.tasks.sandbox import ExecLimits, require_opt_in
from rad.runtime.decode import generate, left_pad, speculative_generate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_tiny_models")


@pytest.fixture(scope="module")
def shipped_root() -> Path:
    root = shared_data()
    if not (root / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"task data not found under {root}; set RAD_DATA_DIR to ../shared/data")
    return root


@pytest.fixture
def few_rows(shipped_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder holding the first few rows of each shipped file."""
    for rel, n in (("gsm8k/train.jsonl", 8), ("gsm8k/test.jsonl", 4),
                   ("math500/test.jsonl", 4)):
        dest = tmp_path / "data" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(shipped_root / rel, encoding="utf-8") as f:
            dest.write_text("".join(islice(f, n)), encoding="utf-8")
    monkeypatch.setenv("RAD_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


# -- the lm-eval backend ------------------------------------------------------------------------
class EchoLM(RadLM):
    """Answers every generate_until request with a known text built from the document."""

    def __init__(self, loaded, answer):
        super().__init__(loaded=loaded)
        self.answer = answer

    def generate_until(self, requests, disable_tqdm: bool = False):
        return [self.answer(req.doc) for req in requests]


@pytest.mark.parametrize("chat", [False, True])
def test_backend_end_to_end_on_local_rows(tiny, few_rows, chat):
    for task, fewshot, metrics in (("gsm8k", 5, {"exact_match", "exact_match_flexible"}),
                                   ("math500", 4, {"math_verify", "exact_match"})):
        res = run_lm_eval_task(tiny, task, LmEvalSettings(chat=chat, limit=2, batch_size=2,
                                                          max_gen_toks=6))
        assert res["n"] == 2 and set(res["metrics"]) == metrics
        assert all(0.0 <= v <= 1.0 for v in res["metrics"].values())
        assert res["settings"]["num_fewshot"] == (0 if chat else fewshot)
        assert res["settings"]["doc_indices"] == [0, 1]
        for rec in res["records"]:
            assert {"prompt", "output", "extracted", "correct", "target"} <= set(rec)
            assert isinstance(rec["correct"], bool)
        first = json.loads((few_rows / f"{task}/test.jsonl").read_text().splitlines()[0])
        question = first["question" if task == "gsm8k" else "problem"]
        assert question in res["records"][0]["prompt"]
        assert ("<|im_start|>assistant" in res["records"][0]["prompt"]) == chat


def test_loglikelihood_request_types_through_lm_eval(tiny, few_rows):
    """lm-eval's loglikelihood and loglikelihood_rolling requests on local GSM8K rows, checked
    against a plain full forward of the same tokens."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = {"test": str(few_rows / "gsm8k/test.jsonl")}
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": data},
              "test_split": "test"}
    tasks = [
        {**common, "task": "ll", "output_type": "loglikelihood",
         "doc_to_text": "Question: {{question}}\nAnswer:",
         "doc_to_target": "{{answer.split('#### ')[-1]}}",
         "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}]},
        {**common, "task": "rolling", "output_type": "loglikelihood_rolling",
         "doc_to_text": "", "doc_to_target": "{{answer}}",
         "metric_list": [{"metric": "word_perplexity"}]},
    ]
    from lm_eval.api.registry import get_model
    assert get_model("rad") is RadLM  # registered: lm_eval.simple_evaluate(model="rad", ...)
    backend = RadLM(loaded=tiny, batch_size=3)
    out = lm_eval.simple_evaluate(model=backend, tasks=tasks, limit=3, log_samples=True,
                                  task_manager=TaskManager(include_defaults=False))
    assert out["results"]["ll"]["perplexity,none"] > 1
    tok = tiny.tokenizer
    for smp in out["samples"]["ll"]:
        ctx, cont = smp["arguments"][0]
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        cont_ids = tok(ctx + cont, add_special_tokens=False)["input_ids"][len(ctx_ids):]
        assert smp["resps"][0][0][0] == pytest.approx(_full_forward_logp(tiny, ctx_ids, cont_ids),
                                                      abs=1e-3)
    for smp in out["samples"]["rolling"]:
        ids = tok(smp["arguments"][0][0], add_special_tokens=False)["input_ids"]
        ref = _full_forward_logp(tiny, [backend.prefix_token_id], ids)
        assert smp["resps"][0][0] == pytest.approx(ref, abs=1e-3)


def _full_forward_logp(lm, ctx: list[int], cont: list[int]) -> float:
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logp = F.log_softmax(lm.model(ids)[0, :-1].float(), -1)
    return float(logp[-len(cont):].gather(-1, torch.tensor(cont)[:, None]).sum())


def test_batched_scoring_equals_one_full_forward_each(tiny):
    rows = [([5, 6, 7, 8, 9, 10, 11], [12, 13]), ([20], [21, 22, 23, 24]),
            ([30, 31, 32], [33]), ([40, 41, 42, 43, 44, 45, 46, 47, 48, 49], [50, 51, 52])]
    batched = score_continuations(tiny.model, rows, tiny.pad_token_id, batch_size=3)
    for (ctx, cont), (logp, greedy) in zip(rows, batched, strict=True):
        assert logp == pytest.approx(_full_forward_logp(tiny, ctx, cont), abs=1e-3)
        assert isinstance(greedy, bool)
    # greedy is True exactly when the continuation is the model's own greedy choice
    ctx = [5, 6, 7]
    cont = generate(tiny.model, torch.tensor([ctx]), max_new_tokens=3).tokens[0]
    assert score_continuations(tiny.model, [(ctx, cont)], tiny.pad_token_id)[0][1]


def test_batched_generation_equals_batch_one(tiny):
    prompts = ["Question: what is 2 + 3?\nAnswer:", "def add(a, b):", "Hello",
               "Once upon a time there was a very long prompt about many different things,",
               "Problem:\nFind x.\n\nSolution:"]
    ids = [tiny.tokenizer(p)["input_ids"] for p in prompts]
    one = batched_generate(tiny, ids, [], 12, batch_size=1)
    many = batched_generate(tiny, ids, [], 12, batch_size=4)
    assert one == many and all(isinstance(t, str) for t in one)
    # token level, through generate directly (left padding, one cache)
    x, m = left_pad(ids, tiny.pad_token_id)
    rows = generate(tiny.model, x, m, 10, tiny.eos_token_ids).tokens
    for r, single in zip(rows, ids, strict=True):
        assert r == generate(tiny.model, torch.tensor([single]), None, 10,
                                    tiny.eos_token_ids).tokens[0]


def test_stop_strings_end_rows_early_and_are_cut(tiny):
    ids = [tiny.tokenizer("Hello")["input_ids"], tiny.tokenizer("def f(x):")["input_ids"]]
    full = batched_generate(tiny, ids, [], 16, batch_size=2)
    stop = full[0][3:6]  # a substring the first row is known to produce
    assert stop and stop in full[0]
    cut = batched_generate(tiny, ids, [stop], 16, batch_size=2)
    assert cut[0] == full[0].split(stop)[0]
    assert cut[1] == full[1].split(stop)[0]
    # generate: a row ended by `stop` keeps tokens up to and including that step
    x, m = left_pad(ids, tiny.pad_token_id)
    g = generate(tiny.model, x, m, 16, (), stop=lambda i, new: i == 0 and len(new) == 3)
    plain = generate(tiny.model, x, m, 16, ())
    assert g.tokens[0] == plain.tokens[0][:3] and g.tokens[1] == plain.tokens[1]


# -- scoring on known answers ------------------------------------------------------------------
@pytest.mark.parametrize("chat", [False, True])
def test_gsm8k_scores_gold_one_and_wrong_number_zero(tiny, few_rows, chat):
    s = LmEvalSettings(chat=chat, limit=4)
    gold = run_lm_eval_task(tiny, "gsm8k", s, EchoLM(tiny, lambda d: d["answer"]))
    assert gold["metrics"] == {"exact_match": 1.0, "exact_match_flexible": 1.0}
    assert all(r["correct"] and r["extracted"] == r["target"].split("#### ")[-1]
               for r in gold["records"])
    wrong = run_lm_eval_task(tiny, "gsm8k", s, EchoLM(tiny, lambda d: "So #### 987654"))
    assert wrong["metrics"] == {"exact_match": 0.0, "exact_match_flexible": 0.0}
    assert not any(r["correct"] for r in wrong["records"])


def test_math500_scores_gold_boxed_one_and_wrong_zero(tiny, few_rows):
    s = LmEvalSettings(limit=4)
    gold = run_lm_eval_task(tiny, "math500", s, EchoLM(tiny, lambda d: d["solution"]))
    assert gold["metrics"]["math_verify"] == 1.0 and all(r["correct"] for r in gold["records"])
    minerva = run_lm_eval_task(tiny, "math500", s, EchoLM(
        tiny, lambda d: f"Final Answer: The final answer is ${d['answer']}$. I hope it is "
                        "correct."))
    assert minerva["metrics"] == {"math_verify": 1.0, "exact_match": 1.0}
    wrong = run_lm_eval_task(tiny, "math500", s, EchoLM(
        tiny, lambda d: "Final Answer: The final answer is $987654$. I hope it is correct."))
    assert wrong["metrics"] == {"math_verify": 0.0, "exact_match": 0.0}


# -- HumanEval (attacks on its contained execution: test_sandbox.py) ---------------------------
FAST = ExecLimits(timeout_s=2.0)


def test_execution_needs_opt_in(monkeypatch, tiny):
    monkeypatch.delenv("RAD_ALLOW_CODE_EXECUTION", raising=False)
    with pytest.raises(UserError, match="--allow-code-execution"):
        require_opt_in(False)
    with pytest.raises(UserError, match="--allow-code-execution"):
        evaluate_humaneval(tiny, HumanEvalSettings(limit=1), allow_code_execution=False)
    monkeypatch.setenv("RAD_ALLOW_CODE_EXECUTION", "0")
    with pytest.raises(UserError):
        require_opt_in(False)
    monkeypatch.setenv("RAD_ALLOW_CODE_EXECUTION", "1")
    require_opt_in(False)
    require_opt_in(True)


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_humaneval_end_to_end_greedy_and_sampled(tiny):
    s = HumanEvalSettings(limit=2, batch_size=2, max_gen_toks=8, limits=FAST)
    res = evaluate_humaneval(tiny, s, allow_code_execution=True)
    assert res["n"] == 2 and set(res["metrics"]) == {"pass@1"}
    assert res["settings"]["task_ids"] == ["HumanEval/0", "HumanEval/1"]
    for rec in res["records"]:
        assert rec["extracted"].startswith(rec["prompt"]) and isinstance(rec["correct"], bool)
        assert not any(stop in rec["output"] for stop in res["settings"]["until"])
    sampled = evaluate_humaneval(tiny, replace(s, limit=1, n_samples=3, temperature=1.0,
                                               ks=(1, 2)), allow_code_execution=True)
    assert set(sampled["metrics"]) == {"pass@1", "pass@2"} and len(sampled["records"]) == 3
    again = evaluate_humaneval(tiny, replace(s, limit=1, n_samples=3, temperature=1.0,
                                             ks=(1, 2)), allow_code_execution=True)
    assert [r["output"] for r in again["records"]] == [r["output"] for r in sampled["records"]]


# -- two-model speculative decoding and fidelity -----------------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), draft_kind=st.sampled_from(["llama", "qwen2", "llama-tied"]))
def test_two_model_speculative_returns_target_greedy(data, draft_kind):
    _, target = pair("llama")
    _, draft = pair(draft_kind)
    gamma = data.draw(st.integers(1, 5), label="gamma")
    new = data.draw(st.integers(1, 20), label="max new tokens")
    prompt = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=10))
    eos = data.draw(st.sets(st.integers(0, VOCAB - 1), max_size=2), label="eos")
    ids = torch.tensor([prompt])
    ref = generate(target, ids, max_new_tokens=new, eos_token_ids=eos).tokens[0]
    res = speculative_generate(target, ids, new, gamma, eos, draft=draft)
    assert res.tokens == ref
    assert 0 <= res.stats.accepted <= res.stats.drafted and res.stats.emitted == len(ref)
    if draft_kind == "llama":  # the target drafting for itself: every guess is accepted
        assert res.stats.accepted == res.stats.drafted


@pytest.fixture(scope="module")
def perturbed():
    lm = load_model("tiny-random")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 2.0 * p.std())
    return lm


def test_fidelity_of_teacher_to_itself_and_of_a_perturbed_model(tiny, perturbed, few_rows):
    from harness.tasks.fidelity import FidelitySettings, evaluate_fidelity

    s = FidelitySettings(limit=3, batch_size=2, spec_tokens=12)
    same = evaluate_fidelity(load_model("tiny-random"), tiny, "gsm8k", s)["metrics"]
    assert same["kl_teacher_model"] == pytest.approx(0.0, abs=1e-5)
    assert same["top1_agreement"] == 1.0 and same["acceptance_rate"] == 1.0
    assert same["ppl_model"] == pytest.approx(same["ppl_teacher"], rel=1e-4)
    other = evaluate_fidelity(perturbed, tiny, "gsm8k", s)
    m = other["metrics"]
    assert m["kl_teacher_model"] > 0.01 and m["top1_agreement"] < 1.0
    assert m["ppl_teacher"] == pytest.approx(same["ppl_teacher"], rel=1e-4)
    assert 0.0 <= m["acceptance_rate"] < 1.0 and m["reference_tokens"] > 50
    assert len(other["records"]) == 3 and other["n"] == 3
    ref = other["records"][0]["reference"]
    assert "#### " in ref and "<<" not in ref  # calculator annotations removed


# -- configs, CLI ------------------------------------------------------------------------------
def test_task_yamls_ship_with_the_package():
    from importlib import resources

    shipped = sorted(p.name for p in (resources.files("harness") / "tasks").iterdir()
                     if p.name.endswith(".yaml"))
    assert shipped == ["rad_gsm8k.yaml", "rad_gsm8k_chat.yaml", "rad_lambada_openai.yaml",
                       "rad_math500.yaml", "rad_math500_chat.yaml", "rad_piqa.yaml",
                       "rad_winogrande.yaml"]
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "tasks/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["harness"]
    for name in shipped:  # no absolute or placeholder paths committed
        text = (resources.files("harness") / "tasks" / name).read_text()
        assert "/" + "work" not in text and "$" + "{" not in text


def test_rendered_yaml_points_at_local_data(few_rows, tmp_path):
    import yaml

    name = eval_tasks.render_task("gsm8k", True, tmp_path)
    assert name == "rad_gsm8k_chat"
    base = yaml.safe_load((tmp_path / "rad_gsm8k.yaml").read_text())
    assert Path(base["include"]).is_file() and base["include"].endswith("gsm8k/gsm8k.yaml")
    assert base["dataset_kwargs"]["data_files"]["test"] == str(few_rows / "gsm8k/test.jsonl")


def test_sample_seed_draws_a_fixed_sorted_subset(few_rows):
    assert task_data.doc_indices("gsm8k", 2, None) == [0, 1]
    a = task_data.doc_indices("gsm8k", 3, 7)
    assert a == task_data.doc_indices("gsm8k", 3, 7) == sorted(a) and len(set(a)) == 3
    assert task_data.doc_indices("gsm8k", None, None) is None


def _cli(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_bad_input_is_one_line_exit_2(capsys, few_rows, tmp_path, monkeypatch):
    monkeypatch.delenv("RAD_ALLOW_CODE_EXECUTION", raising=False)
    cases = [
        (["--tasks", "gsm8k,nope"], "unknown task 'nope'"),
        (["--tasks", "humaneval"], "--allow-code-execution"),
        (["--tasks", "gsm8k", "--sample-seed", "3"], "--limit"),
        (["--tasks", "gsm8k", "--fidelity"], "--teacher"),
        (["--tasks", "gsm8k", "--batch-size", "0"], "--batch-size"),
    ]
    for extra, needle in cases:
        rc, _, err = _cli(capsys, "eval", "--model", "tiny-random", *extra)
        assert rc == 2 and needle in err and err.count("\n") == 1, (extra, err)
    (tmp_path / "notmodel").mkdir()
    rc, _, err = _cli(capsys, "eval", "--model", str(tmp_path / "notmodel"), "--tasks", "gsm8k")
    assert rc == 2 and "config.json" in err and err.count("\n") == 1
    (few_rows / "math500/test.jsonl").unlink()
    rc, _, err = _cli(capsys, "eval", "--model", "tiny-random", "--tasks", "math500")
    assert rc == 2 and "rad data check" in err and err.count("\n") == 1
    monkeypatch.setattr(eval_tasks, "lm_eval_tasks_dir", lambda: tmp_path)
    rc, _, err = _cli(capsys, "eval", "--model", "tiny-random", "--tasks", "gsm8k")
    assert rc == 2 and "lacks its built-in task file gsm8k/gsm8k.yaml" in err


def test_cli_writes_json_and_per_sample_records(capsys, few_rows, tmp_path):
    out = tmp_path / "res" / "eval.json"
    rc, stdout, err = _cli(capsys, "eval", "--model", "tiny-random", "--tasks",
                           "gsm8k,humaneval", "--limit", "2", "--max-gen-toks", "4",
                           "--batch-size", "2", "--allow-code-execution", "--json", str(out))
    assert rc == 0, err
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"gsm8k", "humaneval"}
    assert set(result["tasks"]["gsm8k"]["metrics"]) == {"exact_match", "exact_match_flexible"}
    assert set(result["tasks"]["humaneval"]["metrics"]) == {"pass@1"}
    for task, entry in result["tasks"].items():
        assert entry["n"] == 2 and entry["settings"]["batch_size"] == 2
        lines = (out.parent / entry["samples_file"]).read_text().splitlines()
        assert len(lines) == 2
        for rec in map(json.loads, lines):
            assert {"prompt", "output", "extracted", "correct"} <= set(rec), task
    assert result["provenance"]["packages"]["lm-eval"]
    # every setting, one flat object under its flag's name, whatever groups it in the code
    assert set(result["config"]) == {
        "model", "tasks", "dtype", "limit", "task_limits", "sample_seed", "fewshot", "chat",
        "batch_size", "max_gen_toks", "allow_code_execution", "json_path", "teacher",
        "fidelity", "samples", "temperature", "pass_k", "seed", "exec_timeout", "gamma",
        "spec_tokens", "threads", "device", "from_samples"}
    assert {k: result["config"][k] for k in ("limit", "batch_size", "max_gen_toks",
                                              "allow_code_execution", "json_path")} == {
        "limit": 2, "batch_size": 2, "max_gen_toks": 4, "allow_code_execution": True,
        "json_path": str(out)}
    assert "generate_until" in err  # the progress bar
    from harness.report.tables import eval_markdown_rows
    rows = eval_markdown_rows(result)
    assert rows[0].startswith("| gsm8k | 5-shot | exact_match ") and "| 2 | 2 | 4 |" in rows[0]
    assert rows[1].startswith("| humaneval | 0-shot | pass@1 ")
