"""Log-likelihood scoring: the shared-context scorer behind the likelihood suite
against one full forward per pair, on attention, hybrid and all-Mamba2 models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import VOCAB, pair

from harness.tasks import batching
from harness.tasks.batching import pack, score_continuations
from rad.method.replace import build_hybrid

PAD = 0
_MODELS: dict = {}


def _model(layers: tuple[int, ...]):
    if layers not in _MODELS:
        teacher = pair("llama")[1]
        _MODELS[layers] = (build_hybrid(teacher, list(layers), "kqvo", seed=1) if layers
                           else teacher).eval()
    return _MODELS[layers]


def _reference(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """One unpadded, uncached forward of context + continuation."""
    if not cont:
        return 0.0, True
    with torch.inference_mode():
        logits = model(torch.tensor([ctx + cont]))[0, len(ctx) - 1:-1].float()
    target = torch.tensor(cont)
    logp = F.log_softmax(logits, -1).gather(-1, target[:, None]).sum()
    return float(logp), bool((logits.argmax(-1) == target).all())


token = st.integers(1, VOCAB - 1)


@settings(max_examples=25, deadline=None)
@given(layers=st.sampled_from([(), (1,), (0, 2), (0, 1, 2)]),
       questions=st.lists(st.tuples(st.lists(token, min_size=1, max_size=9),
                                    st.lists(st.lists(token, min_size=0, max_size=5),
                                             min_size=1, max_size=4)),
                          min_size=1, max_size=5),
       batch_size=st.integers(1, 6))
def test_shared_context_scoring_equals_one_forward_per_pair(layers, questions, batch_size):
    """Contexts repeat (a question's choices) and differ in length; continuations of 0-5
    tokens; any batch size: every pair's log-likelihood and greedy flag as if scored alone."""
    model = _model(layers)
    pairs = [(ctx, cont) for ctx, conts in questions for cont in conts]
    got = score_continuations(model, pairs, PAD, batch_size=batch_size)
    for (ctx, cont), (logp, greedy) in zip(pairs, got, strict=True):
        ref_logp, ref_greedy = _reference(model, ctx, cont)
        assert logp == pytest.approx(ref_logp, abs=1e-3)
        if abs(logp - ref_logp) < 1e-5 or not cont:
            assert greedy == ref_greedy


def test_a_context_is_prefilled_once_per_batch(monkeypatch):
    """Two choices of one question: the context runs once (one prefill row), not twice."""
    rows = []
    real = batching.prefill
    monkeypatch.setattr(batching, "prefill",
                        lambda m, ids, mask, cache: rows.append(ids.shape[0]) or real(
                            m, ids, mask, cache))
    ctx = [5, 6, 7, 8]
    score_continuations(_model(()), [(ctx, [9, 10]), (ctx, [11]), ([3, 4], [5])], PAD,
                        batch_size=8)
    assert rows == [2]  # two distinct contexts in one batch


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 40)), max_size=30),
       max_rows=st.integers(1, 8), max_cells=st.integers(1, 120))
def test_pack_is_greedy_in_order_and_within_limits(items, max_rows, max_cells):
    """The one packing of both scorers: the items in order, each batch within both limits
    (or a lone item), and no batch could have taken the next batch's first item."""
    batches = pack(items, max_rows, max_cells)
    assert [j for b in batches for j in b] == list(range(len(items)))

    def fits(batch: list[int]) -> bool:
        rows = sum(items[j][0] for j in batch)
        return rows <= max_rows and rows * max(1, *(items[j][1] for j in batch)) <= max_cells

    for b, after in zip(batches, [*batches[1:], None], strict=False):  # [] with [None]
        assert len(b) == 1 or fits(b)
        if after is not None:
            assert not fits(b + after[:1])
