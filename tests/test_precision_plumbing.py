"""The one precision policy reaches every command and profile: `--precision` on each command
that runs a compute-bound stage, the profile's top-level `precision` key, and the resolved
choice in what each writes. (The policy's numerics are tests/test_precision.py's.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_models import one_error_line, one_line_message

from harness.cli import build_parser
from harness.common.errors import UserError
from harness.experiment.config import PROFILES_DIR, config_from_dict, load_config, profile_names
from harness.experiment.runner import distill_settings, precision_inputs
from rad.runtime.precision import PRECISIONS, resolve_precision

ROOT = Path(__file__).resolve().parents[1]

# each command given the flag, with just its required arguments (nothing runs: parse only)
COMMANDS = {
    "eval": [],
    "diagnose": ["--model", "m", "--out", "o"],
    "select": ["--model", "m", "--out", "o", "--k", "1"],
    "compare-sets": ["--model", "m", "--out", "o", "--k", "1"],
    "compare-samplers": ["--model", "m", "--out", "o", "--k", "1"],
    "kl-profile": ["--model", "m", "--out", "o"],
    "generate": ["--model", "m", "--prompt", "p"],
    "speculate": ["--model", "m", "--prompt", "p"],
    "distill": ["--method", "rad", "--model", "m", "--steps", "1", "--out", "o"],
    "distill-compare": ["--model", "m", "--k", "1", "--steps", "1", "--out", "o"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_compute_command_takes_precision_default_auto(command):
    parser = build_parser(command)
    argv = [command, *COMMANDS[command]]
    assert parser.parse_args(argv).precision == "auto"
    for value in PRECISIONS:
        assert parser.parse_args([*argv, "--precision", value]).precision == value


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_precision_is_one_line_exit_2(cli, command):
    r = cli(command, *COMMANDS[command], "--precision", "fp16")
    assert r.rc == 2 and r.out == ""
    line = one_error_line(r.err)
    assert all(word in line for word in ("--precision", "fp16", "auto", "fp32", "bf16"))


# -- profiles --------------------------------------------------------------------------------------
def _smoke_dict() -> dict:
    return yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())


def test_every_shipped_profile_loads_with_its_precision():
    expected = {"smoke": "fp32", "paper": "bf16", "gpu-smoke": "bf16", "cpu": "auto"}
    assert set(expected) <= set(profile_names())
    for name in profile_names():
        cfg = load_config(name)
        assert cfg.precision in PRECISIONS
        assert "precision" not in cfg.as_dict()["distill"]
        if name in expected:
            assert cfg.precision == expected[name], name


def test_profile_precision_is_validated():
    d = _smoke_dict()
    d["precision"] = "fp16"
    with pytest.raises(UserError) as e:
        config_from_dict(d)
    assert "precision must be one of auto, fp32, bf16" in one_line_message(e)


def test_the_old_distill_precision_key_names_its_new_place():
    d = _smoke_dict()
    d["distill"]["precision"] = "fp32"
    with pytest.raises(UserError) as e:
        config_from_dict(d)
    message = one_line_message(e)
    assert "config.distill: 'precision' moved to the top-level 'precision'" in message


def test_fp32_keeps_the_step_keys_it_had():
    """The smoke profile (fp32) hashes its steps as before the key moved: no precision key
    where fp32 resolves, and the distill step's settings are the committed run's `distill:`
    with its top-level precision, the dict the key hashed when `distill:` held it."""
    assert precision_inputs(resolve_precision("fp32", "cpu")) == {}
    assert precision_inputs(resolve_precision("bf16", "cpu")) == {"precision": "bf16"}
    committed = json.loads((ROOT / "results/smoke/results.json").read_text())["config"]
    assert "precision" not in committed["distill"] and committed["precision"] == "fp32"
    assert distill_settings(load_config("smoke")) == {**committed["distill"], "precision": "fp32"}


# -- what the commands write -----------------------------------------------------------------------
@pytest.mark.usefixtures("fast_tiny_models")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_records_the_resolved_precision(cli, tmp_path, precision):
    out = tmp_path / "eval.json"
    r = cli("eval", "--model", "tiny-random", "--tasks", "gsm8k", "--limit", "1",
            "--max-gen-toks", "2", "--batch-size", "1", "--precision", precision,
            "--json", str(out))
    assert r.rc == 0, r.err
    result = json.loads(out.read_text())
    assert result["precision"] == resolve_precision(precision, "cpu").as_dict()
    assert result["precision"]["resolved"] == precision
    assert result["config"]["dtype"] == "fp32"  # the stored dtype, beside the policy


@pytest.mark.usefixtures("fast_tiny_models")
def test_kl_profile_records_the_resolved_precision(cli, tmp_path):
    data = ["--seq-len", "16", "--train-seqs", "2", "--heldout-seqs", "1", "--topk", "8"]
    r = cli("kl-profile", "--model", "tiny-random", "--rows", "1", *data,
            "--precision", "bf16", "--out", str(tmp_path))
    assert r.rc == 0, r.err
    record = json.loads((tmp_path / "kl_profile.json").read_text())
    assert record["precision"]["requested"] == record["precision"]["resolved"] == "bf16"
    assert record["dtype"] == "fp32"


@pytest.mark.usefixtures("fast_tiny_models")
def test_diagnose_records_the_resolved_precision(cli, tmp_path):
    r = cli("diagnose", "--model", "tiny-random", "--prompts", "gsm8k-train:1",
            "--max-new-tokens", "4", "--objective", "teacher-forced", "--precision", "bf16",
            "--out", str(tmp_path))
    assert r.rc == 0, r.err
    record = json.loads((tmp_path / "redundancy.json").read_text())
    assert record["precision"] == resolve_precision("bf16", "cpu").as_dict()
    assert record["dtype"] == "fp32"


@pytest.mark.usefixtures("fast_tiny_models")
def test_generate_says_what_it_resolved_to_on_stderr(cli):
    r = cli("generate", "--model", "tiny-random", "--prompt", "hi", "--max-new-tokens", "1",
            "--precision", "bf16")
    assert r.rc == 0, r.err
    assert "rad: precision bf16 (asked for bf16" in r.err
