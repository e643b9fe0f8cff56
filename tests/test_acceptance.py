"""The teacher-forced acceptance objective equals real self-speculative decoding, exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import KINDS, VOCAB, ours_from_hf, tiny_hf

from harness.report.stats import spearman
from rad.method.acceptance import simulate_skip_set, trace_verifier
from rad.runtime.decode import SpecStats, speculative_generate
from rad.runtime.model import Decoder

_F64: dict[str, Decoder] = {}


def f64(kind: str) -> Decoder:
    """float64 twins: the simulation sums attention in another order than SDPA, and float64
    keeps argmax ties out of the comparison, so equality is exact."""
    if kind not in _F64:
        _F64[kind] = ours_from_hf(tiny_hf(kind), dtype=torch.float64)
    return _F64[kind]


def counts(s: SpecStats) -> tuple[int, int, int, int]:
    return s.drafted, s.accepted, s.verify_steps, s.emitted


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_simulation_equals_real_decoding(data, kind):
    model = f64(kind)
    skip = data.draw(st.sets(st.integers(0, model.cfg.n_layers - 1)), label="skip")
    gamma = data.draw(st.integers(1, 6), label="gamma")
    new = data.draw(st.integers(1, 24), label="max new tokens")
    prompts = data.draw(st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12),
                                 min_size=1, max_size=3), label="prompts")
    eos = data.draw(st.sets(st.integers(0, VOCAB - 1), max_size=2), label="eos")
    ids = [torch.tensor([p]) for p in prompts]
    real = SpecStats()
    for x in ids:
        real = real.merge(speculative_generate(model, x, new, gamma, eos, skip=skip).stats)
    sim = simulate_skip_set(model, trace_verifier(model, ids, new, eos), skip, gamma)
    assert counts(sim) == counts(real)
    assert sim.mean_accepted_length == real.mean_accepted_length


def test_one_trace_serves_every_skip_set():
    model = f64("llama")
    ids = [torch.tensor([[5, 6, 7, 8]]), torch.tensor([[1, 2]])]
    trace = trace_verifier(model, ids, 16)
    for skip in ({0}, {1, 2}, set(), {0, 1, 2}):
        real = SpecStats()
        for x in ids:
            real = real.merge(speculative_generate(model, x, 16, 3, skip=skip).stats)
        assert counts(simulate_skip_set(model, trace, skip, 3)) == counts(real)
    # Nothing skipped: the draft is the verifier, every draft token is accepted.
    full = simulate_skip_set(model, trace, set(), 3)
    assert full.accepted == full.drafted > 0


def test_rejects_what_it_cannot_simulate():
    model = f64("llama")
    trace = trace_verifier(model, [torch.tensor([[1, 2, 3]])], 8)
    with pytest.raises(ValueError, match="out of range"):
        simulate_skip_set(model, trace, {7}, 2)
    with pytest.raises(ValueError, match="gamma"):
        simulate_skip_set(model, trace, {0}, 0)
    hybrid = Decoder(model.cfg, ["attention", "mamba2", "attention"])
    with pytest.raises(ValueError, match="all-attention"):
        trace_verifier(hybrid, [torch.tensor([[1, 2, 3]])], 8)


def test_spearman_textbook_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Monotone but not linear: ranks only.
    assert spearman([1, 2, 3, 4, 5], [1, 4, 9, 16, 1000]) == pytest.approx(1.0)
    # Textbook: d = (0, 0, 1, -1, 0) for 5 items, rho = 1 - 6*2 / (5*24) = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 2, 4, 3, 5]) == pytest.approx(0.9)
    # Ties take their mean rank.
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, rel=1e-6)
