"""The compiled static decode step against the eager forward (the reference): same greedy tokens
for plain, batched left-padded and speculative decoding, on Llama/Qwen2 teachers and hybrids
with any attention/Mamba2 pattern.

Two levels: `static_forward` run *eagerly* (its static-shape logic: full-cache mask, slot
writes, ring snapshots) over many cases, and the real `torch.compile` over fewer (each new shape
compiles for a few seconds on these CPUs).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import KINDS, N_LAYERS, TOL, VOCAB, pair

from rad.method.replace import build_hybrid
from rad.runtime import compile_mode, static_step
from rad.runtime.decode import generate, left_pad, prefill, speculative_generate
from rad.runtime.static_step import STATS, Stepper, static_forward

layer_sets = st.sets(st.integers(0, N_LAYERS - 1)).map(sorted)
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.function_scoped_fixture])


@pytest.fixture
def mode():
    """Sets the compile switch for a test and restores it after."""
    before = compile_mode.compile_mode()
    yield compile_mode.set_compile_mode
    compile_mode.set_compile_mode(before)


@pytest.fixture
def uncompiled(monkeypatch):
    """The static step without torch.compile: checks its logic in milliseconds per case."""
    monkeypatch.setattr(static_step.GRAPHS, "forward_of",
                        lambda model: lambda *args: static_forward(model, *args))


def _model(kind: str, mamba_layers: list[int], seed: int):
    _, teacher = pair(kind)
    return build_hybrid(teacher, mamba_layers, "kqvo", seed=seed) if mamba_layers else teacher


def _rows(data, batch: int) -> list[list[int]]:
    return [data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=9), label="row")
            for _ in range(batch)]


def _both(mode, fn):
    mode("off")
    ref = fn()
    mode("on")
    return ref, fn()


# -- the static step's logic (no compile) ------------------------------------------------------

@settings(SLOW, max_examples=40)
@given(data=st.data(), kind=st.sampled_from(KINDS), layers=layer_sets,
       skip=layer_sets, T=st.integers(1, 5), rollback=st.integers(0, 6))
def test_static_step_logits_match_the_eager_forward(mode, uncompiled, data, kind, layers, skip,
                                                    T, rollback):
    """Multi-token steps into a cache holding a left-padded batch, with skipped layers and
    Mamba2 rollback rings: the same logits and the same cache as the eager forward."""
    model = _model(kind, layers, seed=len(layers))
    ids, mask = left_pad(_rows(data, data.draw(st.integers(1, 3), label="batch")), 0)
    new = torch.randint(0, VOCAB, (ids.shape[0], T), generator=torch.Generator().manual_seed(T))
    caches, outs = [], []
    compiled = STATS.compiled_steps
    for m in ("off", "on"):
        mode(m)
        cache = model.allocate_cache(ids.shape[0], ids.shape[1] + 2 * T + 3, max_rollback=rollback)
        prefill(model, ids, mask, cache)
        step = Stepper(model, cache, skip)
        outs.append(torch.cat([step(new), step(new[:, :1])], 1))
        caches.append(cache)
    torch.testing.assert_close(outs[1], outs[0], rtol=TOL, atol=TOL)
    runs_mamba = any(i not in skip for i in layers)
    static_ran = not (runs_mamba and rollback and T > rollback)  # else eager by design
    assert STATS.compiled_steps == compiled + (2 if static_ran else 1)
    ref, got = caches
    assert got.length == ref.length and torch.equal(got.n_valid, ref.n_valid)
    assert torch.equal(got.key_valid, ref.key_valid)
    for a, b in zip(ref.states, got.states, strict=True):
        if hasattr(a, "k"):
            torch.testing.assert_close(b.k[:, :, :ref.length], a.k[:, :, :ref.length])
        else:
            assert b.length == a.length and b.snapshots == a.snapshots
            torch.testing.assert_close(b.ssm, a.ssm, rtol=TOL, atol=TOL)
            torch.testing.assert_close(b.conv, a.conv)


def test_static_step_rolls_mamba2_back_like_the_eager_step(mode, uncompiled):
    """A rollback restores the ring snapshot the static step wrote (the speculative path)."""
    model = _model("llama", [0, 2], seed=1)
    ids = torch.tensor([[5, 6, 7, 8]])
    after = {}
    for m in ("off", "on"):
        mode(m)
        cache = model.allocate_cache(1, 16, max_rollback=4)
        prefill(model, ids, None, cache)
        step = Stepper(model, cache)
        step(torch.tensor([[1, 2, 3]]))
        cache.rollback(5)
        after[m] = step(torch.tensor([[9]]))
    assert STATS.compiled_steps > 0
    torch.testing.assert_close(after["on"], after["off"], rtol=TOL, atol=TOL)


# -- the real compile ---------------------------------------------------------------------------

@pytest.mark.slow
@settings(SLOW, max_examples=6)
@given(data=st.data(), kind=st.sampled_from(KINDS), layers=layer_sets,
       batch=st.integers(1, 3), new=st.integers(1, 12))
def test_compiled_generate_gives_the_eager_greedy_tokens(mode, data, kind, layers, batch, new):
    model = _model(kind, layers, seed=new)
    ids, mask = left_pad(_rows(data, batch), 0)
    ref, got = _both(mode, lambda: generate(model, ids, mask, new, stop_at_eos=False).tokens)
    assert got == ref


@pytest.mark.slow
@settings(SLOW, max_examples=6)
@given(data=st.data(), layers=layer_sets, skip=layer_sets, gamma=st.integers(1, 5),
       threshold=st.sampled_from([None, 0.5]))
def test_compiled_speculative_decoding_gives_the_eager_tokens(mode, data, layers, skip, gamma,
                                                              threshold):
    """Skip-draft on a teacher or a hybrid (draft steps, gamma + 1 verify blocks, Mamba2
    snapshots written inside the graph and rolled back outside it)."""
    model = _model("llama", layers, seed=gamma)
    ids = torch.tensor([_rows(data, 1)[0]])

    def run():
        res = speculative_generate(model, ids, 12, gamma, skip=skip, stop_threshold=threshold)
        return res.tokens, res.stats.accepted, res.stats.drafted

    ref, got = _both(mode, run)
    assert got == ref
    assert got[0] == generate(model, ids, max_new_tokens=12).tokens[0]


@pytest.mark.slow
def test_compiled_hybrid_draft_for_its_teacher(mode):
    _, teacher = pair("qwen2")
    hybrid = build_hybrid(teacher, [1], "kqvo", seed=3)
    ids = torch.tensor([[4, 8, 15, 16, 23]])
    ref, got = _both(mode, lambda: speculative_generate(teacher, ids, 14, 3, draft=hybrid).tokens)
    assert got == ref


@pytest.mark.slow
def test_compile_runs_once_per_shape_and_is_counted(mode):
    _, model = pair("llama")
    mode("on")
    ids = torch.tensor([[1, 2, 3]])
    generate(model, ids, max_new_tokens=6)
    shapes, compiled = STATS.shapes, STATS.compiled_steps
    generate(model, torch.tensor([[4, 5, 6, 7]]), max_new_tokens=6)  # same bucketed cache
    assert STATS.shapes == shapes  # reused, not recompiled
    assert STATS.compiled_steps == compiled + 5


@pytest.mark.slow
def test_auto_stays_eager_on_cpu_until_a_shape_is_hot(mode, monkeypatch):
    _, model = pair("llama-tied")
    mode("auto")
    monkeypatch.setattr(compile_mode, "AUTO_CPU_STEPS", 3)
    compiled = STATS.compiled_steps
    generate(model, torch.tensor([[9, 9]]), max_new_tokens=7)  # 6 steps: 3 eager, 3 compiled
    assert STATS.compiled_steps == compiled + 3


@pytest.mark.slow
def test_training_after_compiling_drops_the_frozen_graphs(mode):
    """Frozen graphs hold the weights as constants; an in-place update must not be ignored."""
    _, teacher = pair("llama")
    model = build_hybrid(teacher, [], "kqvo")  # a private copy to modify
    ids = torch.tensor([[3, 1, 4], [1, 5, 9]])  # two rows: a frozen graph (see _freezing)
    mode("on")
    before = generate(model, ids, max_new_tokens=5).tokens
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    after = generate(model, ids, max_new_tokens=5).tokens
    mode("off")
    assert after == generate(model, ids, max_new_tokens=5).tokens
    assert after != before


def test_bad_compile_mode_is_refused():
    with pytest.raises(ValueError, match="auto, on, off"):
        compile_mode.set_compile_mode("fast")


@pytest.mark.slow
def test_past_the_live_shape_cap_graphs_start_afresh_and_stay_exact(mode, monkeypatch):
    """Frozen graphs hold weight copies; past MAX_LIVE_SHAPES all are dropped, then recompiled."""
    _, model = pair("qwen2")
    monkeypatch.setattr(static_step, "MAX_LIVE_SHAPES", 1)
    ids, mask = left_pad([[1, 2, 3], [4, 5]], 0)
    mode("off")
    ref = [generate(model, ids[:b], mask[:b], 5).tokens for b in (1, 2, 1)]
    mode("on")
    shapes = STATS.shapes
    got = [generate(model, ids[:b], mask[:b], 5).tokens for b in (1, 2, 1)]
    assert got == ref
    assert STATS.shapes == shapes + 3  # batch 1 was dropped by batch 2, so compiled again


def test_the_switch_is_the_environment_and_provenance_records_it(monkeypatch):
    from harness.common.provenance import provenance

    monkeypatch.setenv("RAD_COMPILE", "off")
    assert compile_mode.compile_mode() == "off" and provenance()["compile"] == "off"
    compile_mode.set_compile_mode("on")
    assert provenance()["compile"] == "on"
    monkeypatch.setenv("RAD_COMPILE", "fast")
    with pytest.raises(ValueError, match="RAD_COMPILE"):
        compile_mode.compile_mode()
