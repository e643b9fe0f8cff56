"""The precision policy: what `auto` resolves to and why, and that the bf16 paths track the fp32
reference (which stays the tested reference everywhere)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import loop_data, random_ids, sharp_hybrid, sharp_teacher

from harness.experiment.distill_data import compute_targets
from harness.tasks.batching import score_continuations
from rad.method.distill.loop import TrainConfig, train
from rad.method.distill.trainable import set_trainable
from rad.runtime import linear
from rad.runtime import precision as P
from rad.runtime.linear import streamed_matvec, streams_weight
from rad.runtime.precision import FP32, FrozenCasts, for_inference, resolve_precision


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


# -- the fast paths against their references ---------------------------------------------------

def test_frozen_casts_swap_only_frozen_linear_weights_and_restore_the_masters():
    hybrid = sharp_hybrid()
    trained = set_trainable(hybrid, "ssm-only")
    masters = {n: p for n, p in hybrid.named_parameters()}
    head = hybrid.lm_head.weight
    casts = FrozenCasts(hybrid, resolve_precision("bf16", "cpu"))
    assert casts.swaps  # the frozen attention/MLP projections and the tied head
    with casts.applied():
        for mod, _, _ in casts.swaps:
            assert mod.weight.dtype == torch.bfloat16 and not mod.weight.requires_grad
        assert hybrid.embed.weight.dtype == torch.float32  # the residual stream stays fp32
        assert all(p.dtype == torch.float32 for p in trained.values())
    assert all(p is masters[n] for n, p in hybrid.named_parameters())
    assert hybrid.lm_head.weight is head  # (the embedded teacher's tie: the same object back)
    assert not FrozenCasts(hybrid, FP32).swaps


def test_bf16_ssm_only_training_leaves_every_frozen_weight_bit_identical(tmp_path):
    hybrid = sharp_hybrid()
    before = {n: p.detach().clone() for n, p in hybrid.named_parameters()}
    cfg = TrainConfig(steps=3, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=3,
                      ckpt_every=3, precision="bf16")
    train(hybrid, "ssm-only", cfg, 0, loop_data(), tmp_path, progress=False)
    trained = {n for n, _ in set_trainable(sharp_hybrid(), "ssm-only").items()}
    after = dict(hybrid.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trained)
    assert any(not torch.equal(after[n], before[n]) for n in trained)
    assert all(p.dtype == torch.float32 for p in after.values())


def test_bf16_inference_runs_a_bf16_copy_and_leaves_the_masters():
    teacher = sharp_teacher()
    bf = for_inference(teacher, resolve_precision("bf16", "cpu"))
    assert bf is not teacher and bf.dtype == torch.bfloat16 and teacher.dtype == torch.float32
    assert for_inference(teacher, FP32) is teacher
    assert for_inference(bf, FP32) is bf  # fp32 never up-casts bf16 weights
    assert resolve_precision("bf16", "cpu").inference_dtype(torch.long) == torch.long


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), n_in=st.integers(1, 70), n_out=st.integers(1, 90),
       seed=st.integers(0, 2**16))
def test_streamed_matvec_matches_matmul(rows, n_in, n_out, seed):
    """The compiled batch-1 bf16 product (`rad.runtime.linear.streamed_matvec`) is the matmul,
    accumulated in fp32: within bf16's output rounding of the fp32 product of the same values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 1, n_in, generator=gen).bfloat16()
    w = torch.randn(n_out, n_in, generator=gen).bfloat16()
    got = streamed_matvec(x, w)
    ref = x.float() @ w.float().t()
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 1, n_out)
    assert torch.allclose(got.float(), ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()) + 1e-6)


def test_streaming_is_chosen_only_for_one_bf16_row_inside_a_compiled_trace(monkeypatch):
    w, x = torch.zeros(8, 4, dtype=torch.bfloat16), torch.zeros(1, 1, 4, dtype=torch.bfloat16)
    assert not streams_weight(x, w)  # eagerly it would materialise (rows, out, in)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert streams_weight(x, w)
    assert not streams_weight(torch.zeros(2, 1, 4, dtype=torch.bfloat16), w)  # batch 2: GEMM
    assert not streams_weight(x.float(), w.float())  # fp32 GEMV already streams


@pytest.mark.slow
def test_compiled_bf16_decode_streams_and_gives_the_eager_tokens(monkeypatch):
    """Batch-1 bf16 decode through the compiled step (where `streamed_matvec` runs) gives the
    eager bf16 step's greedy tokens on a sharp random teacher."""
    from rad.runtime.compile_mode import set_compile_mode
    from rad.runtime.decode import generate
    from rad.runtime.static_step import GRAPHS

    model = sharp_teacher().to(torch.bfloat16)
    ids = random_ids(1, 12, 7)
    mask = torch.ones_like(ids)
    calls = []
    real = linear.streamed_matvec
    monkeypatch.setattr(linear, "streamed_matvec", lambda x, w: calls.append(1) or real(x, w))
    try:
        set_compile_mode("off")
        eager = generate(model, ids, mask, 16, stop_at_eos=False).tokens
        set_compile_mode("on")
        GRAPHS.reset()
        compiled = generate(model, ids, mask, 16, stop_at_eos=False).tokens
    finally:
        set_compile_mode("auto")
        GRAPHS.reset()
    assert calls  # the compiled trace took the streamed product
    assert compiled == eager
