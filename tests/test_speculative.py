"""Self-speculative decoding returns the verifier's plain greedy tokens, with consistent stats."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import KINDS, VOCAB, pair

from rad.runtime.decode import generate, speculative_generate


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_speculative_equals_plain_greedy(data, kind):
    _, model = pair(kind)
    n_layers = model.cfg.n_layers
    skip = data.draw(st.sets(st.integers(0, n_layers - 1)), label="skip")
    gamma = data.draw(st.integers(1, 6), label="gamma")
    threshold = data.draw(st.sampled_from([None, 0.05, 0.5, 0.99]), label="stop threshold")
    new = data.draw(st.integers(1, 24), label="max new tokens")
    prompt = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12))
    eos = data.draw(st.sets(st.integers(0, VOCAB - 1), max_size=2), label="eos")
    ids = torch.tensor([prompt])
    ref = generate(model, ids, max_new_tokens=new, eos_token_ids=eos).tokens[0]
    res = speculative_generate(model, ids, new, gamma, eos, skip=skip, stop_threshold=threshold)
    assert res.tokens == ref
    s = res.stats
    assert 0 <= s.accepted <= s.drafted
    assert 0.0 <= s.acceptance_rate <= 1.0
    assert s.emitted == len(res.tokens)
    # One verifier token per verify step plus the accepted drafts (drafting never overshoots
    # the limit; only an EOS inside accepted drafts truncates).
    if not set(res.tokens) & eos:
        assert s.emitted == s.accepted + s.verify_steps
    else:
        assert s.emitted <= s.accepted + s.verify_steps
    assert s.mean_accepted_length <= gamma


def test_empty_skip_accepts_every_draft():
    _, model = pair("llama")
    res = speculative_generate(model, torch.tensor([[3, 1, 4, 1, 5]]), 20, gamma=4)
    assert res.stats.drafted > 0 and res.stats.accepted == res.stats.drafted
    assert res.stats.emitted == res.stats.accepted + res.stats.verify_steps == 20


def test_adaptive_stop_drafts_less():
    _, model = pair("qwen2")
    ids = torch.tensor([[7, 8, 9]])
    fixed = speculative_generate(model, ids, 24, gamma=6, skip={0, 2})
    adaptive = speculative_generate(model, ids, 24, gamma=6, skip={0, 2}, stop_threshold=0.99)
    assert adaptive.tokens == fixed.tokens
    assert adaptive.stats.drafted < fixed.stats.drafted


def test_bad_arguments():
    _, model = pair("llama")
    with pytest.raises(ValueError, match="batch 1"):
        speculative_generate(model, torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="gamma"):
        speculative_generate(model, torch.zeros(1, 3, dtype=torch.long), 4, gamma=0)
    with pytest.raises(ValueError, match="out of range"):
        speculative_generate(model, torch.zeros(1, 3, dtype=torch.long), 4, skip={99})


def test_speculate_cli_prints_completion_and_stats(capsys):
    from harness.cli import main

    assert main(["speculate", "--model", "tiny-random", "--prompt", "hello world",
                 "--skip", "1,3", "--gamma", "3", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("[speculate] skip=[1, 3] gamma=3")
    assert "acceptance=" in out[-1] and "mean_accepted_length=" in out[-1]
    assert main(["speculate", "--model", "tiny-random", "--prompt", "x", "--skip", "4"]) == 2
    assert main(["speculate", "--model", "tiny-random", "--prompt", "x", "--gamma", "0"]) == 2


def test_a_separate_draft_takes_no_skip_set():
    _, model = pair("llama")
    with pytest.raises(ValueError, match="self-speculative draft"):
        speculative_generate(model, torch.tensor([[1, 2, 3]]), 4, draft=model, skip={0})
