"""Tests for the `rad` command line: every command in-process through `main(argv)`, every user
error as exit 2 and one line on stderr, and one run of the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import one_error_line, shared_data

import rad.runtime.decode
import rad.runtime.prompts
from harness.cli import main
from harness.models import TEACHERS, resolve_model_folder
from rad.runtime.precision import resolve_precision

GENERATE = ["generate", "--model", "tiny-random", "--prompt", "hello world",
            "--max-new-tokens", "5"]


@pytest.fixture(scope="session")
def tiny_folder() -> Path:
    """Build tiny-random in the environment's cache up front, so no test sees build output."""
    return resolve_model_folder("tiny-random")


@pytest.fixture
def generate_calls(monkeypatch) -> list[SimpleNamespace]:
    """Record each generate call the CLI makes (arguments and result)."""
    calls: list[SimpleNamespace] = []
    real = rad.runtime.decode.generate

    def spy(model, input_ids, *args, **kwargs):
        result = real(model, input_ids, *args, **kwargs)
        calls.append(SimpleNamespace(model=model, input_ids=input_ids, args=args,
                                     kwargs=kwargs, result=result))
        return result

    monkeypatch.setattr(rad.runtime.decode, "generate", spy)
    return calls


def entries_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- models and help -----------------------------------------------------------------------------
def test_models_lists_registered_teachers(cli):
    r = cli("models")
    assert r.rc == 0
    names = [line.split()[0] for line in r.out.splitlines() if line.strip()]
    assert names == list(TEACHERS)
    assert {"smollm2-135m-instruct", "tiny-random"} <= set(names)


@pytest.mark.parametrize("argv, expected", [
    (["--help"], ["generate", "models", "data", "bench", "reproduce", "hybrid", "report",
                "gate"]),
    (["hybrid", "build", "--help"], ["--layers", "--init", "kqvo", "skip", "--out"]),
    (["bench", "throughput", "--help"], ["--contexts", "--batch", "--with-hybrids", "--json"]),
    (["bench", "runtime", "--help"], ["--model", "--batch", "--new-tokens", "--repeats",
                                      "--json"]),
])
def test_help_exits_zero(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


# -- generate ------------------------------------------------------------------------------------
def test_generate_prints_the_completion(tiny_folder, cli, generate_calls):
    from transformers import AutoTokenizer

    r = cli(*GENERATE)
    assert r.rc == 0
    assert "rad: error" not in r.err
    (call,) = generate_calls
    # the default --precision auto: bf16 weights where this CPU multiplies bf16 natively
    auto = resolve_precision("auto", "cpu")
    assert call.model.dtype == (torch.bfloat16 if auto.bf16 else torch.float32)
    tokens = call.result.tokens[0]
    assert 1 <= len(tokens) <= 5
    tok = AutoTokenizer.from_pretrained(tiny_folder)
    assert r.out == tok.decode(tokens, skip_special_tokens=True) + "\n"
    assert r.out.strip()
    # Greedy: the same command prints the same text.
    assert cli(*GENERATE).out == r.out


def test_generate_chat_uses_the_template(tiny_folder, cli, generate_calls, monkeypatch):
    rendered: list[str] = []
    real = rad.runtime.prompts.render_prompt

    def spy(tokenizer, text, chat):
        rendered.append(real(tokenizer, text, chat))
        return rendered[-1]

    monkeypatch.setattr(rad.runtime.prompts, "render_prompt", spy)
    r = cli(*GENERATE, "--chat")
    assert r.rc == 0
    assert r.out.endswith("\n")
    (prompt,) = rendered
    assert "hello world" in prompt and prompt != "hello world"
    assert prompt.rstrip().endswith("assistant")  # the assistant's turn is opened
    (call,) = generate_calls
    assert 1 <= len(call.result.tokens[0]) <= 5


def test_generate_bf16(tiny_folder, cli, generate_calls):
    r = cli(*GENERATE, "--dtype", "bf16")
    assert r.rc == 0
    assert r.out.endswith("\n")
    (call,) = generate_calls
    assert call.model.dtype == torch.bfloat16
    assert 1 <= len(call.result.tokens[0]) <= 5


def test_generate_skip(tiny_folder, cli, generate_calls):
    r = cli(*GENERATE, "--skip", "0,1")
    assert r.rc == 0
    assert r.out.endswith("\n")
    (call,) = generate_calls
    assert call.kwargs["skip"] == frozenset({0, 1})


@pytest.mark.parametrize("extra, words", [
    (["--skip", "9"], ["--skip", "0..3", "9"]),
    (["--skip", "1,1"], ["--skip", "distinct"]),
    (["--dtype", "fp16"], ["fp16", "fp32", "bf16"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["--prompt", ""], ["empty prompt"]),
])
def test_generate_bad_arguments(tiny_folder, cli, generate_calls, extra, words):
    r = cli(*GENERATE, *extra)
    assert r.rc == 2
    assert r.out == ""
    line = one_error_line(r.err)
    for word in words:
        assert word in line
    assert generate_calls == []


def test_generate_unknown_model(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RAD_CACHE_DIR", str(tmp_path / "cache"))
    r = cli("generate", "--model", "no-such-model", "--prompt", "hi")
    assert r.rc == 2
    assert r.out == ""
    line = one_error_line(r.err)
    assert "no-such-model" in line
    for name in TEACHERS:
        assert name in line
    assert not (tmp_path / "cache").exists()


def test_generate_unsupported_architecture(cli, tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64}))
    r = cli("generate", "--model", str(folder), "--prompt", "hi")
    assert r.rc == 2
    line = one_error_line(r.err)
    for word in ("bert", "llama", "qwen2", "mistral"):
        assert word in line


def test_generate_folder_without_config(cli, tmp_path):
    r = cli("generate", "--model", str(tmp_path), "--prompt", "hi")
    assert r.rc == 2
    line = one_error_line(r.err)
    assert "no config.json" in line and str(tmp_path) in line


def test_console_script_exit_code(tmp_path):
    """The installed `rad` script turns main()'s 2 into the process exit status."""
    script = Path(sys.executable).with_name("rad")
    exe = str(script) if script.exists() else shutil.which("rad")
    assert exe, "the rad console script is not installed"
    env = dict(os.environ, RAD_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([exe, "generate", "--model", "no-such-model", "--prompt", "hi"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "tiny-random" in one_error_line(proc.stderr)


# -- data ------------------------------------------------------------------------------------------
def test_data_check_shared_data(cli, monkeypatch):
    monkeypatch.setenv("RAD_DATA_DIR", str(shared_data()))
    r = cli("data", "check")
    assert r.rc == 0, r.err
    counts = {tuple(line.split()[:2]): line.split()[2] for line in r.out.splitlines()}
    assert counts == {("gsm8k", "train"): "7473", ("gsm8k", "test"): "1319",
                      ("math500", "test"): "500", ("humaneval", "test"): "164",
                      ("cruxeval", "test"): "800", ("cruxeval_i", "test"): "800",
                      ("piqa", "validation"): "1838", ("winogrande", "validation"): "1267",
                      ("lambada_openai", "test"): "5153"}
    assert r.err == ""


def test_data_check_missing_data(cli, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("RAD_DATA_DIR", str(empty))
    monkeypatch.setenv("RAD_CACHE_DIR", str(tmp_path / "cache"))
    r = cli("data", "check")
    assert r.rc == 2
    line = one_error_line(r.err)
    assert str(empty / "gsm8k" / "train.jsonl") in line
    assert "RAD_DATA_DIR" in line
    assert "164" in r.out  # the bundled HumanEval is still counted
    assert entries_of(empty) == [] and not (tmp_path / "cache").exists()  # never downloads


# -- bench -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_runtime_json(tiny_folder, cli, tmp_path):
    path = tmp_path / "out" / "bench.json"
    r = cli("bench", "runtime", "--model", "tiny-random", "--batch", "1,2", "--new-tokens", "4",
            "--dtype", "fp32", "--repeats", "1", "--json", str(path))
    assert r.rc == 0, r.err
    result = json.loads(path.read_text())
    assert entries_of(path.parent) == ["bench.json"]
    assert result["model"] == "tiny-random"
    records = result["records"]
    assert isinstance(records, list)
    cells = sorted((rec["dtype"], rec["batch"], rec["impl"]) for rec in records)
    impls = ["hf", "rad", "rad-compiled"]  # a bench's auto compiles: the eager one is beside it
    assert cells == sorted((d, b, i) for d in ["fp32"] for b in [1, 2] for i in impls)
    assert result["compile"] == "on"
    for rec in records:
        assert rec["tok_s"] > 0 and rec["new_tokens"] == 4 and rec["prompt_tokens"] > 0
        if rec["impl"] == "hf":
            assert rec["same_tokens_as_hf"] is None
        else:
            assert rec["same_tokens_as_hf"] is True  # greedy tokens identical to HF's
        assert (rec["compile_s"] is not None) == (rec["impl"] == "rad-compiled")
    # The printed table has one row per record.
    rows = [line.split() for line in r.out.splitlines()]
    assert sum(1 for row in rows if row[:1] in [[i] for i in impls]) == len(records)


def test_bench_runtime_without_compile_has_no_compiled_rows(tiny_folder, cli, tmp_path):
    path = tmp_path / "bench.json"
    r = cli("bench", "runtime", "--model", "tiny-random", "--batch", "1", "--new-tokens", "3",
            "--dtype", "fp32", "--repeats", "1", "--compile", "off", "--json", str(path))
    assert r.rc == 0, r.err
    result = json.loads(path.read_text())
    assert result["compile"] == "off"
    assert sorted(rec["impl"] for rec in result["records"]) == ["hf", "rad"]


def test_bad_compile_value_is_a_usage_error(cli):
    r = cli("generate", "--model", "tiny-random", "--prompt", "x", "--compile", "fast")
    assert r.rc == 2 and "--compile" in r.err


@pytest.mark.parametrize("extra, word", [
    (["--batch", "0"], "--batch"),
    (["--new-tokens", "0"], "--new-tokens"),
    (["--repeats", "0"], "--repeats"),
    (["--dtype", "fp16"], "fp16"),
])
def test_bench_bad_arguments(cli, tmp_path, extra, word):
    path = tmp_path / "bench.json"
    r = cli("bench", "runtime", "--model", "tiny-random", "--new-tokens", "4", "--repeats", "1",
            "--dtype", "fp32", "--json", str(path), *extra)
    assert r.rc == 2
    assert r.out == ""
    assert word in one_error_line(r.err)
    assert not path.exists()


# -- hybrid build and throughput -------------------------------------------------------------------
def test_hybrid_build_then_generate(tiny_folder, cli, tmp_path, generate_calls):
    out = tmp_path / "hyb"
    r = cli("hybrid", "build", "--model", "tiny-random", "--layers", "1,3", "--init", "skip",
            "--out", str(out))
    assert r.rc == 0, r.err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "rad_hybrid" and cfg["mamba_layers"] == [1, 3]
    assert cfg["layer_kinds"] == ["attention", "mamba2", "attention", "mamba2"]
    assert cfg["base_model"] == "tiny-random" and cfg["init"] == "skip"
    assert "git_commit" in cfg["provenance"] and "model.safetensors" in entries_of(out)
    assert "tokenizer.json" in entries_of(out)
    # `skip` init: the hybrid generates exactly what the teacher generates with 1,3 skipped
    assert cli("generate", "--model", str(out), "--prompt", "hello world",
               "--max-new-tokens", "5").rc == 0
    assert cli(*GENERATE, "--skip", "1,3").rc == 0
    hybrid_call, skip_call = generate_calls
    assert hybrid_call.model.layer_kinds == cfg["layer_kinds"]
    assert hybrid_call.result.tokens == skip_call.result.tokens


@pytest.mark.parametrize("extra, word", [
    (["--layers", "1,4"], "out of range"),
    (["--layers", "-1"], "out of range"),
    (["--layers", "1,1"], "duplicate"),
    (["--layers", "a"], "integers"),
    (["--init", "zeros"], "unknown init"),
])
def test_hybrid_build_bad_arguments(tiny_folder, cli, tmp_path, extra, word):
    out = tmp_path / "hyb"
    argv = {"--layers": "1", "--init": "skip"}
    argv.update(dict(zip(extra[::2], extra[1::2], strict=True)))
    r = cli("hybrid", "build", "--model", "tiny-random", "--out", str(out),
            *[x for kv in argv.items() for x in kv])
    assert r.rc == 2
    assert word in one_error_line(r.err)
    assert not out.exists() and entries_of(tmp_path) == []  # nothing written, no temp left


def test_hybrid_folders_that_do_not_load(tiny_folder, cli, tmp_path):
    out = tmp_path / "hyb"
    assert cli("hybrid", "build", "--model", "tiny-random", "--layers", "0", "--init", "kqvo",
               "--out", str(out)).rc == 0
    r = cli("hybrid", "build", "--model", "tiny-random", "--layers", "0", "--init", "kqvo",
            "--out", str(out))
    assert r.rc == 2 and "already exists" in one_error_line(r.err)
    (out / "model.safetensors").write_bytes(b"not safetensors")
    r = cli("generate", "--model", str(out), "--prompt", "hi", "--max-new-tokens", "2")
    assert r.rc == 2 and "cannot read" in one_error_line(r.err)
    (out / "config.json").write_text(json.dumps({"model_type": "rad_hybrid",
                                                 "format_version": 1}))
    r = cli("generate", "--model", str(out), "--prompt", "hi", "--max-new-tokens", "2")
    assert r.rc == 2 and "hybrid config" in one_error_line(r.err)


@pytest.mark.slow
def test_bench_throughput_json(tiny_folder, cli, tmp_path):
    path, md = tmp_path / "tp.json", tmp_path / "tp.md"
    r = cli("bench", "throughput", "--model", "tiny-random", "--with-hybrids", "--contexts",
            "16,48", "--batch", "1,3", "--new-tokens", "2", "--repeats", "1", "--json",
            str(path), "--md", str(md))
    assert r.rc == 0, r.err
    records = json.loads(path.read_text())["records"]
    cells = sorted((x["model"], x["context"], x["batch"]) for x in records)
    assert cells == sorted((m, c, b) for m in ("teacher", "hybrid-50", "full-ssm")
                           for c in (16, 48) for b in (1, 3))
    for x in records:
        assert x["prefill_tok_s"] > 0 and x["decode_tok_s"] > 0 and x["state_bytes"] > 0
    state = {(x["model"], x["context"], x["batch"]): x["state_bytes"] for x in records}
    assert state["full-ssm", 16, 3] == state["full-ssm", 48, 3]  # SSM state: constant
    assert state["teacher", 48, 3] == 3 * state["teacher", 16, 3]  # KV: linear in context
    assert state["hybrid-50", 48, 3] < state["teacher", 48, 3]
    assert {x["mamba_layers"] for x in records if x["model"] == "hybrid-50"} == {2}
    assert md.read_text().count("\n| ") == len(records) + 1  # header + one row per record


@pytest.mark.parametrize("extra, word", [
    (["--contexts", "0"], "--contexts"),
    (["--batch", ""], "--batch"),
    (["--repeats", "0"], "--repeats"),
    (["--device", "tpu"], "--device"),
])
def test_bench_throughput_bad_arguments(cli, tmp_path, extra, word):
    path = tmp_path / "tp.json"
    r = cli("bench", "throughput", "--model", "tiny-random", "--json", str(path), *extra)
    assert r.rc == 2 and word in one_error_line(r.err)
    assert not path.exists()


# -- distill and methods ---------------------------------------------------------------------------
DISTILL = ["--model", "tiny-random", "--steps", "2", "--seq-len", "16", "--train-seqs", "4",
           "--heldout-seqs", "2", "--topk", "8", "--eval-every", "1", "--batch-size", "2"]


def test_methods_lists_the_recipes(cli):
    r = cli("methods")
    assert r.rc == 0
    names = [line.split()[0] for line in r.out.splitlines()[1:] if not line.startswith(" ")]
    assert {"teacher", "rad", "plain-distill", "random-swap", "full-ssm"} <= set(names)


def test_distill_end_to_end_then_rerun(tiny_folder, cli, tmp_path, monkeypatch, generate_calls):
    monkeypatch.setenv("RAD_DATA_DIR", str(shared_data()))
    out = tmp_path / "run"
    r = cli("distill", "--method", "random-swap", "--k", "2", "--seed", "3", "--out", str(out),
            *DISTILL)
    assert r.rc == 0, r.err
    summary = json.loads((out / "distill.json").read_text())
    assert summary["k"] == 2 and len(summary["layers"]) == 2 and summary["steps"] == 2
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [0, 1, 2]
    assert all(c["heldout_kl"] >= 0 for c in curve)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mamba_layers"] == summary["layers"] and cfg["init"] == "skip"
    assert cfg["provenance"]["method"] == "random-swap"
    assert cli("generate", "--model", str(out), "--prompt", "hi", "--max-new-tokens", "2").rc == 0
    again = cli("distill", "--method", "random-swap", "--k", "2", "--seed", "3", "--out",
                str(out), *DISTILL)
    assert again.rc == 0 and "already complete" in again.out
    other = cli("distill", "--method", "random-swap", "--k", "2", "--seed", "4", "--out",
                str(out), *DISTILL)
    assert other.rc == 2 and "other settings" in one_error_line(other.err)


def _other_tokenizer_folder(tiny_folder: Path, dest: Path) -> Path:
    from transformers import AutoTokenizer
    shutil.copytree(tiny_folder, dest)
    tok = AutoTokenizer.from_pretrained(dest)
    tok.add_tokens(["<an-extra-token>"])
    tok.save_pretrained(dest)
    return dest


@pytest.mark.parametrize("case", ["method", "teacher-method", "k", "k-full", "tokenizer",
                                  "selection-missing", "selection-model", "record-kind",
                                  "record-missing", "out"])
def test_distill_bad_input_fails_before_training(tiny_folder, cli, tmp_path, monkeypatch, case):
    monkeypatch.setenv("RAD_DATA_DIR", str(shared_data()))
    out = tmp_path / "run"
    sel = tmp_path / "selection.json"
    sel.write_text(json.dumps({"layers": [0, 1], "k": 2, "n_layers": 30,
                               "model": "smollm2-135m-instruct"}))
    tiny_sel = tmp_path / "tiny_selection.json"
    tiny_sel.write_text(json.dumps({"layers": [0, 1], "k": 2, "n_layers": 4,
                                    "model": "tiny-random"}))
    argv, word = {
        "method": (["--method", "nope", "--k", "2"], "unknown method"),
        "teacher-method": (["--method", "teacher", "--k", "2"], "trains nothing"),
        "k": (["--method", "plain-distill", "--k", "9"], "out of range"),
        "k-full": (["--method", "full-ssm", "--k", "2"], "every layer"),
        "tokenizer": (["--method", "plain-distill", "--k", "2", "--teacher",
                       str(_other_tokenizer_folder(tiny_folder, tmp_path / "t2"))],
                      "different tokenizers"),
        "selection-missing": (["--method", "rad", "--k", "2"], "--selection"),
        "selection-model": (["--method", "rad", "--k", "2", "--selection", str(sel)],
                            "record for smollm2-135m-instruct"),
        # kl-guided reads a kl_profile.json: a selection.json for the right model is refused
        "record-kind": (["--method", "kl-guided", "--k", "2", "--selection", str(tiny_sel)],
                        "not a kl_profile.json record"),
        "record-missing": (["--method", "profile-top-k", "--k", "2"],
                           "needs --selection redundancy.json from 'rad diagnose"),
        "out": (["--method", "plain-distill", "--k", "2"], "not writable"),
    }[case]
    if case == "out":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    r = cli("distill", *argv, "--out", str(out), *DISTILL)
    assert r.rc == 2
    assert word in one_error_line(r.err)
    assert not out.exists()


@pytest.mark.slow
def test_distill_compare_writes_the_report(tiny_folder, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RAD_DATA_DIR", str(shared_data()))
    r = cli("distill-compare", "--methods", "plain-distill,random-swap,full-ssm", "--k", "2",
            "--seeds", "0,1", "--out", str(tmp_path / "runs"), "--report-dir",
            str(tmp_path / "report"), *DISTILL)
    assert r.rc == 0, r.err
    assert entries_of(tmp_path / "report") == ["distillation.json", "distillation.md",
                                               "distillation.png"]
    rep = json.loads((tmp_path / "report" / "distillation.json").read_text())
    assert [row["method"] for row in rep["rows"]] == ["plain-distill", "random-swap", "full-ssm"]
    assert len(rep["curves"]) == 6 and rep["reference"] == "plain-distill"
    plain = next(row for row in rep["rows"] if row["method"] == "plain-distill")
    # the reference reaches its own mean final KL in at least one seed, at a real eval step
    assert any(s in (0, 1, 2) for s in plain["steps_to_target"])
    full = next(row for row in rep["rows"] if row["method"] == "full-ssm")
    assert all(len(v) == 4 for v in full["layers"].values())  # every layer of tiny-random
    # a rerun does not train again: every cell is complete
    again = cli("distill-compare", "--methods", "plain-distill,random-swap,full-ssm", "--k",
                "2", "--seeds", "0,1", "--out", str(tmp_path / "runs"), "--report-dir",
                str(tmp_path / "report"), *DISTILL)
    assert again.rc == 0 and again.out.count("already complete") == 6


def test_distill_compare_passes_a_loss_override_to_every_cell(tiny_folder, cli, tmp_path,
                                                             monkeypatch):
    """--loss reaches each cell (it was once replaced by the recipe's loss without a word)."""
    monkeypatch.setenv("RAD_DATA_DIR", str(shared_data()))
    r = cli("distill-compare", "--methods", "plain-distill", "--k", "2", "--seeds", "0",
            "--out", str(tmp_path / "runs"), "--loss", "reverse-kl", *DISTILL)
    assert r.rc == 0, r.err
    summary = json.loads((tmp_path / "runs/plain-distill-s0/distill.json").read_text())
    assert summary["settings"]["train"]["loss"] == "reverse-kl"


@pytest.mark.slow
def test_distill_rad_align_with_a_selection_file(tiny_folder, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RAD_DATA_DIR", str(shared_data()))
    sel = tmp_path / "selection.json"
    sel.write_text(json.dumps({"layers": [2, 1], "k": 2, "n_layers": 4, "model": "tiny-random"}))
    out = tmp_path / "run"
    r = cli("distill", "--method", "rad-align", "--k", "2", "--selection", str(sel),
            "--out", str(out), *DISTILL)
    assert r.rc == 0, r.err
    summary = json.loads((out / "distill.json").read_text())
    assert summary["layers"] == [1, 2] and summary["selection"]["selector"] == "rad"
    assert set(summary["alignment"]) == {"1", "2"}  # stage 1 ran on each new mixer
    for layer in summary["alignment"].values():
        assert layer["mse_after"] < layer["mse_before"]
