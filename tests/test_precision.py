"""The precision policy: what `auto` resolves to and why, and that the bf16 paths track the fp32
reference (which stays the tested reference everywhere)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import loop_data, random_ids, shared_data, sharp_hybrid, sharp_teacher

from harness.experiment.distill_data import compute_targets
from harness.tasks.batching import score_continuations
from rad.method.distill.align import align_mixers
from rad.method.distill.loop import TrainConfig, TrainData, train
from rad.method.distill.losses import distill_loss
from rad.method.distill.trainable import set_trainable
from rad.method.replace import build_hybrid
from rad.runtime import linear
from rad.runtime import precision as P
from rad.runtime.linear import int8_weight_only, streamed_matvec, streams_weight
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

    model = for_inference(sharp_teacher(), resolve_precision("bf16", "cpu"))  # (a copy: cached)
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


# -- on the embedded teacher (the tolerances) ------------------------------------------

@pytest.fixture(scope="module")
def smollm():
    from harness.models import load_model
    return load_model("smollm2-135m-instruct")


def _gsm8k_rows(tok, n_rows: int, seq_len: int) -> torch.Tensor:
    """n_rows x seq_len tokens of GSM8K-train questions and answers (real text: random ids
    would put the teacher far off its distribution)."""
    ids: list[int] = []
    with open(shared_data() / "gsm8k" / "train.jsonl") as f:
        for line in f:
            row = json.loads(line)
            ids += tok(row["question"] + "\n" + row["answer"] + "\n")["input_ids"]
            if len(ids) >= n_rows * seq_len:
                break
    return torch.tensor(ids[:n_rows * seq_len]).view(n_rows, seq_len)


@pytest.mark.teacher
def test_a_bf16_distillation_step_computes_the_fp32_update_on_the_embedded_teacher(smollm):
    """One SSM-only step of a k = 15 hybrid on 4 x 128 GSM8K tokens: the bf16 step (autocast,
    frozen casts, fused loss) has fp32's loss within 1% and a gradient pointing the same way
    (cosine >= 0.97 over all trained parameters)."""
    ids = _gsm8k_rows(smollm.tokenizer, 4, 128)
    targets = compute_targets(smollm.model, ids, 64, 1.0)
    mask = torch.ones(ids.shape, dtype=torch.bool)
    hybrid = build_hybrid(smollm.model, list(range(0, 30, 2)), "skip", seed=0)
    trained = set_trainable(hybrid, "ssm-only")
    losses, grads = {}, {}
    for p in (FP32, resolve_precision("bf16", "cpu")):
        hybrid.zero_grad(set_to_none=True)
        with FrozenCasts(hybrid, p).applied(), p.autocast("cpu"):
            loss = distill_loss(hybrid(ids), targets, ids, mask, "forward-kl", fused=p.bf16)
            loss.backward()
        losses[p.resolved] = float(loss.detach())
        grads[p.resolved] = {n: t.grad.detach().clone() for n, t in trained.items()}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.01), losses
    a, b = (torch.cat([g.flatten() for g in grads[k].values()]) for k in ("fp32", "bf16"))
    assert not torch.equal(a, b)  # the bf16 path did run in bf16
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) >= 0.97  # measured 0.984
    # the norm is 1.17x fp32's here (the closed gate's RMSNorm amplifies by 1 / sqrt(eps));
    # clipping (far below it) and AdamW's normalisation make the direction what moves weights
    assert 0.5 <= float(b.norm() / a.norm()) <= 2.0


@pytest.mark.teacher
@pytest.mark.slow
def test_bf16_distillation_tracks_fp32_on_the_embedded_teacher(smollm, tmp_path):
    """16 steps of 4 x 128 GSM8K tokens, lr 1e-4, data seed 0: the held-out KL curves of the
    fp32 and bf16 runs (each with targets at its own precision) both fall, and bf16 stays
    within 15% + 0.02 nats of fp32 at every evaluation (measured: 4.29 -> 1.50 / 1.21 in fp32,
    1.69 / 1.26 in bf16). Why one seed: at this scale the short curve depends on the data
    order more than on the precision (data seed 1 stalls near 3.8 in fp32 itself), so a second
    seed would test the optimiser's luck; the step test above holds the update itself."""
    ids = _gsm8k_rows(smollm.tokenizer, 80, 128)
    train_ids, held = ids[:64], ids[64:]
    held_targets = compute_targets(smollm.model, held, 64, 1.0)
    curves = {}
    for p in (FP32, resolve_precision("bf16", "cpu")):
        data = TrainData(train_ids, compute_targets(smollm.model, train_ids, 64, 1.0,
                                                    precision=p), held, held_targets)
        hybrid = build_hybrid(smollm.model, list(range(0, 30, 2)), "skip", seed=0)
        cfg = TrainConfig(steps=16, batch_size=4, lr=1e-4, warmup_steps=4, eval_every=4,
                          ckpt_every=16, precision=p.resolved)
        curves[p.resolved] = [r["heldout_kl"] for r in train(
            hybrid, "ssm-only", cfg, 0, data, tmp_path / p.resolved, progress=False)]
    ref, bf = curves["fp32"], curves["bf16"]
    assert ref[-1] < ref[0] and bf[-1] < bf[0], curves
    assert ref[1:] != bf[1:]  # the bf16 path did run in bf16
    for a, b in zip(ref, bf, strict=True):
        assert abs(a - b) <= 0.15 * a + 0.02, curves


@pytest.mark.teacher
def test_bf16_likelihood_keeps_the_piqa_verdicts_on_the_embedded_teacher(smollm):
    """60 PIQA items, both solutions scored in fp32 and on bf16 weights: each log-likelihood
    within 3% (+ 0.3 nats) of fp32's, and the same preferred solution on >= 57 of 60 (measured
    on the AMX machine: see the README's precision section)."""
    tok = smollm.tokenizer
    pairs = []
    with open(shared_data() / "piqa" / "valid.jsonl") as f:
        for line, _ in zip(f, range(60), strict=False):
            row = json.loads(line)
            ctx = tok(f"Question: {row['goal']}\nAnswer:")["input_ids"]
            pairs += [(ctx, tok(" " + row[s])["input_ids"]) for s in ("sol1", "sol2")]
    ref = score_continuations(smollm.model, pairs, smollm.pad_token_id, batch_size=8)
    bf_model = for_inference(smollm.model, resolve_precision("bf16", "cpu"))
    bf = score_continuations(bf_model, pairs, smollm.pad_token_id, batch_size=8)
    for (a, _), (b, _) in zip(ref, bf, strict=True):
        assert abs(a - b) <= 0.03 * abs(a) + 0.3, (a, b)
    assert ref != bf  # the bf16 path did run in bf16
    same = sum((ref[i][0] > ref[i + 1][0]) == (bf[i][0] > bf[i + 1][0])
               for i in range(0, len(pairs), 2))
    assert same >= 57, same


@pytest.mark.teacher
@pytest.mark.slow
def test_bf16_greedy_decode_equals_hf_bf16_on_the_embedded_teacher(smollm):
    """Where both run bf16 weights, our greedy tokens (eager, and the compiled step that
    streams the batch-1 products) equal transformers' own greedy tokens."""
    from transformers import AutoModelForCausalLM

    from rad.runtime.compile_mode import set_compile_mode
    from rad.runtime.decode import generate
    from rad.runtime.static_step import GRAPHS

    hf = AutoModelForCausalLM.from_pretrained(smollm.folder, dtype=torch.bfloat16).eval()
    ours = for_inference(smollm.model, resolve_precision("bf16", "cpu"))
    prompts = ["Janet has 3 apples and buys 5 more. How many apples", "def fibonacci(n):",
               "The capital of France is"]
    try:
        for text in prompts:
            ids = torch.tensor([smollm.tokenizer(text)["input_ids"]])
            with torch.no_grad():
                ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                  min_new_tokens=24, do_sample=False,
                                  pad_token_id=smollm.pad_token_id)[0, ids.shape[1]:].tolist()
            for mode in ("off", "on"):
                set_compile_mode(mode)
                got = generate(ours, ids, None, 24, stop_at_eos=False).tokens[0]
                assert got == ref, (text, mode)
    finally:
        set_compile_mode("auto")
        GRAPHS.reset()


@pytest.mark.teacher
def test_int8_weights_track_bf16_on_the_embedded_teacher(smollm):
    """Weight-only int8 (`int8_weight_only`) against the bf16 weights on 4 x 128 GSM8K tokens:
    the same next-token argmax on >= 90% of positions, the realised token's log-prob within
    0.15 nats on average, and a factual greedy answer kept."""
    from rad.runtime.decode import generate

    bf = for_inference(smollm.model, resolve_precision("bf16", "cpu"))
    q = int8_weight_only(smollm.model)
    assert all(m.int8 is not None for m in q.modules() if isinstance(m, linear.Linear))
    ids = _gsm8k_rows(smollm.tokenizer, 4, 128)
    with torch.no_grad():
        a, b = bf(ids).float().log_softmax(-1), q(ids).float().log_softmax(-1)
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
    nxt = ids[:, 1:, None]
    drift = (a[:, :-1].gather(-1, nxt) - b[:, :-1].gather(-1, nxt)).abs().mean()
    assert agree >= 0.9 and drift <= 0.15, (float(agree), float(drift))
    assert not torch.equal(a, b)
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([smollm.tokenizer(prompt)["input_ids"]])
    out = generate(q, ids, None, 16, smollm.eos_token_ids).tokens[0]
    assert "Paris" in smollm.tokenizer.decode(out)


def test_bf16_stage1_alignment_tracks_fp32():
    """The alignment under bf16 (a bf16 teacher pass, autocast steps) lowers each mixer's
    error as the fp32 reference does, to within 10% of its final MSE; the masters stay fp32."""
    reports = {}
    for p in ("fp32", "bf16"):
        hybrid = sharp_hybrid((0, 2), "kqvo")
        reports[p] = align_mixers(hybrid, sharp_teacher(), random_ids(8, 16, 5), steps=60,
                                  lr=3e-3, precision=resolve_precision(p, "cpu"))
        assert all(t.dtype == torch.float32 for t in hybrid.parameters())
    for layer, ref in reports["fp32"].items():
        got = reports["bf16"][layer]
        assert got["mse_after"] < 0.5 * got["mse_before"]
        assert got["mse_after"] != ref["mse_after"]  # the bf16 path did run in bf16
        assert abs(got["mse_after"] - ref["mse_after"]) <= 0.1 * ref["mse_after"], (ref, got)
