"""`rad bench stages`: its error contract, and one tiny run's records (every stage at every
precision, ratios against fp32, fractions of the measured limits)."""

from __future__ import annotations

import json

import pytest
from tiny_models import one_error_line


def test_bad_precision_is_one_line_and_nothing_written(cli, tmp_path):
    out = tmp_path / "s.json"
    r = cli("bench", "stages", "--model", "tiny-random", "--precision", "fp16", "--json",
            str(out))
    assert r.rc == 2 and "--precision takes auto, fp32, bf16" in one_error_line(r.err)
    assert not out.exists()
    r = cli("bench", "stages", "--model", "tiny-random", "--repeats", "0")
    assert r.rc == 2 and "--repeats" in one_error_line(r.err)


@pytest.mark.slow
def test_tiny_run_times_every_stage_at_every_precision(cli, tmp_path):
    out = tmp_path / "s.json"
    r = cli("bench", "stages", "--model", "tiny-random", "--precision", "fp32,bf16",
            "--repeats", "1", "--k", "2", "--compile", "off", "--json", str(out))
    assert r.rc == 0, r.err
    result = json.loads(out.read_text())
    records = {(x["stage"], x["precision"]): x for x in result["records"]}
    stages = ("targets", "distill", "likelihood", "decode-b1", "decode-b8")
    assert set(records) == ({(s, p) for s in stages for p in ("fp32", "bf16")}
                            | {("decode-b1", "int8-weights"), ("decode-b8", "int8-weights")})
    for (stage, _), x in records.items():
        assert x["tok_s"] > 0 and x["limit_tok_s"] > 0
        assert x["fraction_of_limit"] == pytest.approx(x["tok_s"] / x["limit_tok_s"])
        assert x["ratio_to_fp32"] == pytest.approx(
            x["tok_s"] / records[(stage, "fp32")]["tok_s"])
    assert result["machine"]["gemm_flops"]["bf16"] > 0 and result["machine"]["why"]
    assert "| targets | bf16 |" in r.out and "| decode-b1 | int8-weights |" in r.out
    assert result["machine"]["auto_resolves_to"] in ("fp32", "bf16")
