"""Distillation: losses, trainable policies, determinism, resumption, convergence, recipes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import loop_data, random_ids, sharp_hybrid, sharp_teacher

from rad.method.distill import losses
from rad.method.distill.align import align_mixers
from rad.method.distill.loop import TrainConfig, heldout_kl, heldout_kl_rows, train
from rad.method.distill.losses import (
    bucket_kl,
    bucket_kl_fused,
    full_kl,
    teacher_targets,
    teacher_targets_fused,
)
from rad.method.distill.trainable import new_ssm_parameters
from rad.method.recipes import RECIPES, get_recipe


@pytest.fixture(scope="module")
def data():
    return loop_data()


# -- losses ------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), k=st.integers(1, 12), tau=st.sampled_from([0.5, 1.0, 2.0]),
       reverse=st.booleans())
def test_kl_is_zero_for_the_teacher_and_positive_otherwise(seed, k, tau, reverse):
    g = torch.Generator().manual_seed(seed)
    t_logits = torch.randn(2, 5, 12, generator=g, dtype=torch.float64) * 3
    s_logits = torch.randn(2, 5, 12, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(2, 5, dtype=torch.bool)
    targets = teacher_targets(t_logits, k, tau)
    assert float(bucket_kl(t_logits, targets, mask, reverse)) == pytest.approx(0, abs=1e-6)
    assert float(bucket_kl(s_logits, targets, mask, reverse)) > 0
    # k = vocab: the bucketed KL is the full KL; smaller k never exceeds it (a lower bound)
    full = float(full_kl(s_logits, t_logits, mask, tau, reverse))
    every = float(bucket_kl(s_logits, teacher_targets(t_logits, 12, tau), mask, reverse))
    assert every == pytest.approx(full, rel=1e-5)
    if not reverse:
        assert float(bucket_kl(s_logits, targets, mask)) <= full + 1e-6


def test_masked_tokens_do_not_contribute():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(1, 6, 10, generator=g), torch.randn(1, 6, 10, generator=g)
    mask = torch.tensor([[True, True, False, True, False, False]])
    targets = teacher_targets(t, 4)
    s2 = s.clone()
    s2[0, 2] += 100 * torch.randn(10)  # garbage at masked positions only
    s2[0, 4:] = 0
    assert torch.equal(bucket_kl(s, targets, mask), bucket_kl(s2, targets, mask))
    kept = mask[0].nonzero().flatten()
    assert torch.allclose(bucket_kl(s, targets, mask),
                          bucket_kl(s[:, kept], targets[(slice(None), kept)],
                                    torch.ones(1, len(kept), dtype=torch.bool)))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # (one patch for all)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 9), vocab=st.integers(2, 300),
       k=st.integers(1, 40), tau=st.sampled_from([0.5, 1.0, 2.0]), reverse=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), peaked=st.booleans(),
       sure_student=st.booleans(), chunk=st.integers(1, 5))
def test_fused_vocabulary_passes_match_the_reference(monkeypatch, seed, rows, vocab, k, tau,
                                                       reverse, dtype, peaked, sure_student,
                                                       chunk):
    """The chunked targets pass and the fused KL (value and gradient) track the reference run
    in fp64 (the ground truth) at least as well as the fp32 reference does, for any chunking,
    temperature, direction, input dtype, k up to the whole vocabulary, and a teacher or
    student so sure of itself that a rest bucket underflows fp32's exp."""
    monkeypatch.setattr(losses, "VOCAB_ROWS", chunk)
    g = torch.Generator().manual_seed(seed)
    t_logits = torch.randn(2, rows, vocab, generator=g) * (200.0 if peaked else 3.0)
    s_logits = (torch.randn(2, rows, vocab, generator=g) * (120.0 if sure_student else 3.0)
                ).to(dtype)
    mask = torch.rand(2, rows, generator=g) > 0.3
    truth_t = teacher_targets(t_logits.double(), k, tau)
    for got in (teacher_targets(t_logits, k, tau), teacher_targets_fused(t_logits, k, tau)):
        assert torch.equal(got.index, truth_t.index) and got.logp.dtype == torch.float32
        for a, b in ((got.logp, truth_t.logp), (got.rest, truth_t.rest)):
            assert torch.allclose(a.double(), b, atol=1e-4, rtol=1e-5)
    targets = teacher_targets(t_logits, k, tau)
    x64 = s_logits.double().requires_grad_()
    truth = bucket_kl(x64, targets, mask, reverse)
    truth.backward()
    errors = {}
    for name, fn in (("reference", bucket_kl), ("fused", bucket_kl_fused)):
        x = s_logits.clone().requires_grad_()
        value = fn(x, targets, mask, reverse)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(x.grad).all() and x.grad.dtype == dtype
        assert float(value) == pytest.approx(float(truth), rel=1e-4, abs=1e-5)
        errors[name] = float((x.grad.double() - x64.grad).abs().max())
    scale = float(x64.grad.abs().max())
    # bf16 gradients round to 8 bits; in fp32, 1e-4 of the largest gradient (logits of +-700
    # at tau = 0.5 carry fp32 rounding of ~1e-5 of their size), far below bf16 training's noise
    floor = (4e-3 if dtype == torch.bfloat16 else 1e-4) * max(scale, 1e-12)
    assert errors["fused"] <= max(errors["reference"] * 1.5, floor), (errors, scale)


# -- the loop ----------------------------------------------------------------------------------
# fp32, the tested reference (test_precision checks that bf16 tracks it)
CFG = TrainConfig(steps=12, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=4, ckpt_every=5,
                  precision="fp32")


def _train(model, data, run_dir, policy="ssm-only", cfg=CFG, seed=0, **kw):
    return train(model, policy, cfg, seed, data, run_dir=run_dir, progress=False, **kw)


def test_ssm_only_leaves_every_other_parameter_bit_identical(data, tmp_path):
    model = sharp_hybrid()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = set(new_ssm_parameters(model))
    _train(model, data, tmp_path)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= new
    assert {k for k in new if k.endswith("in_proj.weight")} <= changed
    # written through a temporary file and a rename: none is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "curve.jsonl"]


def test_same_seed_same_weights_and_curve(data, tmp_path):
    a, b = sharp_hybrid(), sharp_hybrid()
    curve_a = _train(a, data, tmp_path / "a")
    curve_b = _train(b, data, tmp_path / "b")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    strip = [[(r["step"], r["train_loss"], r["heldout_kl"]) for r in c]
             for c in (curve_a, curve_b)]
    assert strip[0] == strip[1]
    c = sharp_hybrid()
    _train(c, data, tmp_path / "c", seed=1)
    assert not torch.equal(c.layers[0].mixer.in_proj.weight, a.layers[0].mixer.in_proj.weight)


@pytest.mark.parametrize("policy", ["ssm-only", "all"])
def test_kill_and_resume_ends_identical(data, tmp_path, policy):
    whole = sharp_hybrid()
    curve = _train(whole, data, tmp_path / "whole", policy)
    killed = sharp_hybrid()
    _train(killed, data, tmp_path / "part", policy, stop_after=7)  # checkpoint at 5: 6, 7 lost
    resumed = sharp_hybrid()  # a fresh process: rebuilt from scratch, then the checkpoint
    curve2 = _train(resumed, data, tmp_path / "part", policy)
    for x, y in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert ([(r["step"], r["train_loss"], r["heldout_kl"]) for r in curve]
            == [(r["step"], r["train_loss"], r["heldout_kl"]) for r in curve2])


def test_skip_init_starts_at_the_drafts_heldout_kl(data):
    teacher = sharp_teacher()
    *_, held_ids, held_targets = data
    hybrid = sharp_hybrid((0, 2), "skip")

    # the draft: the teacher with attention 0 and 2 skipped (what kl-guided scores, too)
    draft_kl = heldout_kl(teacher, held_ids, held_targets, skip=[0, 2])
    assert heldout_kl(hybrid, held_ids, held_targets) == draft_kl
    assert heldout_kl(hybrid, held_ids, held_targets) > 0


def test_heldout_kl_is_the_token_weighted_mean_of_its_rows(data):
    *_, held_ids, held_targets = data
    hybrid = sharp_hybrid().train()
    for batch_size in (1, 4, 8):
        rows = heldout_kl_rows(hybrid, held_ids, held_targets, batch_size)
        assert len(rows) == held_ids.shape[0] and min(rows) > 0
        # equal to float32 summation order (rows are equally long)
        assert heldout_kl(hybrid, held_ids, held_targets, batch_size) == pytest.approx(
            sum(rows) / len(rows), rel=1e-6)
    assert heldout_kl_rows(hybrid, held_ids, held_targets, 1) == pytest.approx(rows, rel=1e-5)
    assert hybrid.training  # evaluated in eval mode, its mode restored


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rad", "plain-distill", "random-swap", "full-ssm"])
def test_distillation_lowers_heldout_kl_for_every_method(data, tmp_path, method):
    recipe = get_recipe(method)
    layers = {"rad": [1, 2], "plain-distill": [1], "random-swap": [0, 2],
              "full-ssm": [0, 1, 2]}[method]
    model = sharp_hybrid(layers, recipe.init)
    # fp32, the reference: under bf16 autocast full-ssm's plateau wobbles by ~0.005 at the end
    # (test_precision checks that bf16 tracks this curve)
    cfg = TrainConfig(steps=120, batch_size=4, lr=3e-3, warmup_steps=10, eval_every=40,
                      ckpt_every=120, precision="fp32")
    curve = _train(model, data, tmp_path, recipe.trainable, cfg)
    kls = [r["heldout_kl"] for r in curve]
    # measured: rad 0.27 -> 0.18, plain-distill 0.29 -> 0.21, random-swap 0.358 -> 0.341,
    # full-ssm 0.39 -> 0.31 (layer 0 is hard for the closed-gate init to recover)
    assert kls[-1] < 0.97 * kls[0] and kls[-1] == min(kls), (method, kls)


def test_stage1_alignment_lowers_each_mixers_error():
    teacher = sharp_teacher()
    hybrid = sharp_hybrid((0, 2), "kqvo")
    report = align_mixers(hybrid, teacher, random_ids(8, 16, 5), steps=60, lr=3e-3)
    assert set(report) == {0, 2}
    for r in report.values():
        assert r["mse_after"] < 0.5 * r["mse_before"]


def test_recipes_registry():
    recipes = {name: RECIPES.get(name) for name in RECIPES}
    assert {"teacher", "rad", "plain-distill", "random-swap", "full-ssm"} <= set(recipes)
    rad, plain = recipes["rad"], recipes["plain-distill"]
    assert (rad.selector, rad.init, rad.trainable) == ("rad", "skip", "ssm-only")
    assert (plain.selector, plain.init, plain.trainable) == ("uniform", "kqvo", "all")
    rs = recipes["random-swap"]
    assert (rs.selector, rs.init, rs.trainable) == ("random", rad.init, rad.trainable)
    assert recipes["full-ssm"].selector == "all" and not recipes["teacher"].trains
    with pytest.raises(KeyError, match="unknown method"):
        get_recipe("nope")


def test_bf16_autocast_tracks_the_fp32_reference(data, tmp_path):
    """bf16 autocast (used where bf16 is fast) keeps fp32 master weights and follows the fp32
    path's curve closely; these AVX2 test machines run it emulated, which is only slower."""
    cfg = TrainConfig(steps=6, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=3,
                      ckpt_every=6)
    ref, low = sharp_hybrid(), sharp_hybrid()
    curve_ref = _train(ref, data, tmp_path / "fp32", cfg=replace(cfg, precision="fp32"))
    curve_low = _train(low, data, tmp_path / "bf16", cfg=replace(cfg, precision="bf16"))
    assert all(p.dtype == torch.float32 for p in low.parameters())  # fp32 masters
    for a, b in zip(curve_ref, curve_low, strict=True):
        assert b["heldout_kl"] == pytest.approx(a["heldout_kl"], rel=0.1)
    assert not torch.equal(ref.layers[0].mixer.in_proj.weight,
                           low.layers[0].mixer.in_proj.weight)  # it did run in bf16
