"""`rad reproduce --dry-run`: the paper profile sized from the shipped config.json files alone
(no GPU, no weights, nothing written), and the gpu-smoke profile valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.cli import main
from harness.experiment.config import load_config
from harness.experiment.estimate import Gpu, meta_model, model_config, params, plan

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_give_the_published_parameter_counts():
    # Meta's model cards: 3.21B and 8.03B parameters
    assert params(meta_model(model_config("meta-llama/Llama-3.2-3B-Instruct"))) == 3_212_749_824
    assert params(meta_model(model_config("meta-llama/Llama-3.1-8B-Instruct"))) == 8_030_261_248


def test_paper_dry_run_lists_every_step_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["reproduce", "--profile", "paper", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    cfg = load_config("paper")
    for method in cfg.methods:
        assert f"eval {method}-s0" in text
    assert "| select |" in text and "| teacher targets |" in text and "total:" in text
    assert "(20.6 with FSDP x8)" in text  # plain-distill: all 3.2B parameters train
    assert not out.exists()


def test_estimates_follow_the_profile():
    cfg = load_config("paper")
    steps = {s.name: s for s in plan(cfg)}
    rad, plain = steps["distill rad-s0"], steps["distill plain-distill-s0"]
    assert rad.memory_gb < plain.memory_gb and rad.seconds < plain.seconds
    assert plain.sharded_memory_gb < plain.memory_gb and rad.sharded_memory_gb is None
    assert "eval teacher-s1" not in steps  # one step key for an untrained row
    slow = plan(cfg, Gpu(step_s_per_layer=2e-3))
    assert sum(s.seconds for s in slow) > sum(s.seconds for s in steps.values())


def test_gpu_smoke_profile_is_valid_and_sized_for_minutes(capsys):
    cfg = load_config("gpu-smoke")
    assert cfg.device == "cuda" and cfg.model == "smollm2-random" and len(cfg.methods) == 6
    total = sum(s.seconds for s in plan(cfg))
    assert total < 15 * 60


def test_a_model_without_a_config_is_one_line_error(capsys, tmp_path):
    cfg_file = tmp_path / "p.yaml"
    text = (ROOT / "harness/experiment/profiles/paper.yaml").read_text()
    cfg_file.write_text(text.replace("meta-llama/Llama-3.1-8B-Instruct", "org/unknown-model"))
    assert main(["reproduce", "--profile", str(cfg_file), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.json for 'org/unknown-model'" in err[0]


@pytest.mark.parametrize("name", ["paper", "gpu-smoke", "cpu", "smoke"])
def test_every_shipped_profile_dry_runs(name, capsys):
    assert main(["reproduce", "--profile", name, "--dry-run", "--out", "/nonexistent/x"]) == 0
    assert "total:" in capsys.readouterr().out


def test_teacher_forced_search_is_costed_as_compute_not_decoding():
    cfg = load_config("paper")
    assert cfg.selection.objective == "teacher-forced"  # what the cpu profile proved exact
    forced = {s.name: s.seconds for s in plan(cfg)}
    decoding = {s.name: s.seconds for s in plan(dataclasses.replace(
        cfg, selection=dataclasses.replace(cfg.selection, objective="accepted-length")))}
    assert forced["select"] < decoding["select"] and forced["diagnose"] < decoding["diagnose"]
    assert forced["teacher targets"] == decoding["teacher targets"]
