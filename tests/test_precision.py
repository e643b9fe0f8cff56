"""The precision policy: what `auto` resolves to and why, and that the bf16 paths track the fp32
reference (which stays the tested reference everywhere)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import loop_data, random_ids, sharp_hybrid, sharp_teacher

from harness.experiment.distill_data import compute_targets
from harness.tasks.batching import score_continuations
from rad.method.distill.loop import TrainConfig, train
from rad.runtime import precision as P
from rad.runtime.precision import FP32, resolve_precision


def test_auto_follows_the_hardware_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    p = resolve_precision("auto", "cpu")
    assert (p.requested, p.resolved, p.bf16) == ("auto", "bf16", True) and "AMX" in p.reason
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu").resolved == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    p = resolve_precision("auto", "cpu")
    assert p.resolved == "fp32" and "emulated" in p.reason
    # an explicit choice is kept, and the reason still says what the hardware has
    assert resolve_precision("bf16", "cpu").resolved == "bf16"
    assert resolve_precision("fp32", "cpu").as_dict()["resolved"] == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(steps=1, precision="half")


def test_autocast_runs_matmuls_in_bf16_only_when_resolved_so():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with P.Precision("bf16", "bf16", "test").autocast("cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with FP32.autocast("cpu"):
        assert (x @ w).dtype == torch.float32


def test_bf16_teacher_targets_track_fp32():
    teacher, ids = sharp_teacher(), random_ids(6, 24, 3)
    ref = compute_targets(teacher, ids, 16, 1.0, batch_size=3)
    bf = compute_targets(teacher, ids, 16, 1.0, batch_size=3,
                         precision=resolve_precision("bf16", "cpu"))
    assert bf.logp.dtype == torch.float32  # log-softmax and top-k on fp32 logits
    assert not torch.equal(bf.logp, ref.logp)  # the bf16 path did run in bf16
    top1 = (bf.index[..., 0] == ref.index[..., 0]).float().mean()
    assert top1 >= 0.95, top1
    # the teacher's top-1 log-prob, where both agree on the token, within bf16's rounding
    same = bf.index[..., 0] == ref.index[..., 0]
    assert (bf.logp[..., 0] - ref.logp[..., 0])[same].abs().max() < 0.1


def test_bf16_distillation_tracks_the_fp32_curve(tmp_path):
    """Same data, seed and steps: the held-out KL curve in bf16 autocast stays within 10% (plus
    0.02 nats) of fp32's at every evaluation, and both fall."""
    data = loop_data()
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(steps=12, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=4,
                          ckpt_every=12, precision=precision)
        curves[precision] = [r["heldout_kl"] for r in train(
            sharp_hybrid(), "ssm-only", cfg, 0, data, tmp_path / precision, progress=False)]
    ref, bf = curves["fp32"], curves["bf16"]
    assert ref[-1] < ref[0] and bf[-1] < bf[0]
    assert ref != bf  # the bf16 path did run in bf16
    for a, b in zip(ref, bf, strict=True):
        assert abs(a - b) <= 0.1 * a + 0.02, (ref, bf)


def test_bf16_likelihood_scoring_keeps_the_verdicts():
    teacher = sharp_teacher()
    ids = random_ids(12, 20, 4)
    pairs = [(ids[i, :14].tolist(), ids[i, 14:].tolist()) for i in range(12)]
    pairs += [(c, ids[(i + 1) % 12, 14:].tolist()) for i, (c, _) in enumerate(pairs)]
    ref = score_continuations(teacher, pairs, 0, batch_size=8)
    with resolve_precision("bf16", "cpu").autocast("cpu"):
        bf = score_continuations(teacher, pairs, 0, batch_size=8)
    diffs = [abs(a[0] - b[0]) for a, b in zip(ref, bf, strict=True)]
    assert max(diffs) > 0  # the bf16 path did run in bf16
    assert max(diffs) < 0.05 * max(abs(a[0]) for a in ref), diffs
    # the multiple-choice verdict (which of the two continuations scores higher) is kept
    n = len(ids)
    same = sum((ref[i][0] > ref[i + n][0]) == (bf[i][0] > bf[i + n][0]) for i in range(n))
    assert same >= n - 1, same
