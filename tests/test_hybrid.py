"""Attention -> Mamba2 hybrids: construction invariants, caching, decoding, save/load."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import N_LAYERS, TOL, pair, random_ids

from rad.method.replace import (
    INITS,
    HybridError,
    build_hybrid,
    hybrid_config,
    load_hybrid,
    load_model_folder,
    save_hybrid,
)
from rad.runtime.decode import generate, left_pad, speculative_generate
from rad.runtime.mamba2 import Mamba2
from rad.runtime.weights import WeightImportError

layer_sets = st.sets(st.integers(0, N_LAYERS - 1)).map(sorted)


def _new_params(model) -> dict[str, torch.nn.Parameter]:
    return {f"{i}.{n}": p for i, blk in enumerate(model.layers) if isinstance(blk.mixer, Mamba2)
            for n, p in blk.mixer.named_parameters()}


def test_hybrid_without_mamba_layers_is_the_teacher():
    _, teacher = pair("llama")
    hybrid = build_hybrid(teacher, [], "skip")
    ids = random_ids(2, 9)
    assert torch.equal(hybrid(ids), teacher(ids))


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["llama", "qwen2"]), layers=layer_sets,
       init=st.sampled_from(["skip", "skip-zero"]))
def test_skip_init_hybrid_is_the_skip_draft(kind, layers, init):
    """Exactly (bitwise) the runtime with those attention sub-layers skipped, including q/k/v
    biases (qwen2) and a padded batch."""
    _, teacher = pair(kind)
    hybrid = build_hybrid(teacher, layers, init, seed=1)
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12, 13]], pad_id=0)
    assert torch.equal(hybrid(ids, mask), teacher(ids, mask, skip=layers))


def test_kqvo_copies_v_k_q_o_and_changes_the_output():
    _, teacher = pair("qwen2")
    hybrid = build_hybrid(teacher, [1], "kqvo", seed=0)
    att, mixer = teacher.layers[1].mixer, hybrid.layers[1].mixer
    q, k, v = att.split_qkv(att.qkv_proj.weight, dim=0)
    _, x, B, C, _ = mixer.split_in_proj(mixer.in_proj.weight, dim=0)
    assert torch.equal(x, v) and torch.equal(B, k) and torch.equal(C, q)
    qb, kb, vb = att.split_qkv(att.qkv_proj.bias, dim=0)
    _, xb, Bb, Cb, _ = mixer.split_in_proj(mixer.in_proj.bias, dim=0)
    assert torch.equal(xb, vb) and torch.equal(Bb, kb) and torch.equal(Cb, qb)
    assert torch.equal(mixer.out_proj.weight, att.o_proj.weight)
    ids = random_ids(1, 8)
    assert not torch.allclose(hybrid(ids), teacher(ids, skip=[1]))
    # MLPs, norms, embeddings and the other layers are the teacher's, untouched
    t_sd, h_sd = teacher.state_dict(), hybrid.state_dict()
    for key, value in t_sd.items():
        if not key.startswith("layers.1.mixer."):
            assert torch.equal(h_sd[key], value), key


def _loss(model, ids):
    logits = model(ids)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def _grads_after(model, ids, steps: int) -> dict[str, torch.Tensor]:
    """Gradients of every new parameter at the `steps`-th backward (SGD steps in between)."""
    params = _new_params(model)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.SGD(params.values(), lr=0.1)
    for step in range(steps):
        opt.zero_grad()
        _loss(model, ids).backward()
        if step < steps - 1:
            opt.step()
    return {n: p.grad for n, p in params.items()}


# Backwards until every new parameter has a non-zero gradient, per init. kqvo: the first.
# skip: z alone at first (its output is exactly zero, so out_proj's gradient, which is the input
# it sees, is zero; the closed gate blocks everything behind it), all from the second.
# skip-zero (paper-literal): x rows second, the conv weights (fed by x, B, C) third.
FIRST_FULL_GRADIENT = {"kqvo": 1, "skip": 2, "skip-zero": 3}


@pytest.mark.parametrize("init", sorted(INITS))
def test_every_new_parameter_receives_gradient(init):
    _, teacher = pair("llama")
    ids = random_ids(2, 12)
    first = _grads_after(build_hybrid(teacher, [0, 2], init, seed=0), ids, 1)
    assert any(g is not None and g.abs().max() > 0 for g in first.values())
    if init != "kqvo":  # the exactly-zero output means a dead out_proj gradient at step 1
        assert float(first["0.out_proj.weight"].abs().max()) == 0.0
    grads = _grads_after(build_hybrid(teacher, [0, 2], init, seed=0), ids,
                         FIRST_FULL_GRADIENT[init])
    dead = [n for n, g in grads.items() if g is None or float(g.abs().max()) == 0.0]
    assert not dead, f"{init}: no gradient for {dead}"


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(["llama", "qwen2", "llama-tied"]), layers=layer_sets,
       lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       prefill=st.integers(1, 9), steps=st.integers(1, 6), seed=st.integers(0, 1000))
def test_prefill_then_decode_equals_one_forward(kind, layers, lengths, prefill, steps, seed):
    """Any attention/Mamba2 pattern, batch and left padding: a cached prefill followed by
    one-token steps gives the logits of one uncached forward over the whole sequence, and each
    padded row gives the logits of that row run alone (padding does not leak)."""
    _, teacher = pair(kind)
    hybrid = build_hybrid(teacher, layers, "kqvo", seed=seed)
    rows = [random_ids(1, n, seed + i)[0].tolist() for i, n in enumerate(lengths)]
    ids, mask = left_pad(rows, pad_id=0)
    extra = random_ids(len(rows), steps, seed + 99)
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], 1)
    full = hybrid(full_ids, full_mask)

    T = ids.shape[1]
    cut = min(prefill, T)
    cache = hybrid.allocate_cache(len(rows), T + steps)
    parts = [hybrid(full_ids[:, :cut], full_mask[:, :cut], cache=cache)]
    for t in range(cut, T + steps):
        parts.append(hybrid(full_ids[:, t:t + 1], full_mask[:, t:t + 1], cache=cache))
    inc = torch.cat(parts, 1)
    real = full_mask.bool()
    torch.testing.assert_close(inc[real], full[real], rtol=TOL, atol=TOL)
    for i, row in enumerate(rows):
        alone = hybrid(torch.tensor([row + extra[i].tolist()]))
        torch.testing.assert_close(full[i, real[i]], alone[0], rtol=TOL, atol=TOL)


@settings(max_examples=10, deadline=None)
@given(layers=layer_sets, skip=layer_sets, gamma=st.integers(1, 5), seed=st.integers(0, 100))
def test_self_speculative_decoding_on_a_hybrid_is_exact(layers, skip, gamma, seed):
    """The draft may skip attention and Mamba2 layers alike; the output is plain greedy."""
    _, teacher = pair("llama")
    hybrid = build_hybrid(teacher, layers, "kqvo", seed=seed)
    ids = random_ids(1, 7, seed)
    plain = generate(hybrid, ids, max_new_tokens=16).tokens[0]
    spec = speculative_generate(hybrid, ids, 16, gamma=gamma, skip=skip)
    assert spec.tokens == plain


@settings(max_examples=8, deadline=None)
@given(layers=layer_sets.filter(bool), gamma=st.integers(1, 5), seed=st.integers(0, 100),
       hybrid_is_target=st.booleans())
def test_a_hybrid_drafting_for_its_teacher_is_exact(layers, gamma, seed, hybrid_is_target):
    """Two-model speculative decoding with a hybrid on either side returns the target's plain
    greedy tokens (the hybrid's Mamba2 states roll back through their snapshots)."""
    _, teacher = pair("llama")
    hybrid = build_hybrid(teacher, layers, "kqvo", seed=seed)
    target, draft = (hybrid, teacher) if hybrid_is_target else (teacher, hybrid)
    ids = random_ids(1, 6, seed)
    plain = generate(target, ids, max_new_tokens=14).tokens[0]
    assert speculative_generate(target, ids, 14, gamma=gamma, draft=draft).tokens == plain


def test_batched_generation_on_a_hybrid_equals_batch_one():
    _, teacher = pair("llama")
    hybrid = build_hybrid(teacher, [0, 2], "kqvo", seed=0)
    rows = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15]]
    batched = generate(hybrid, *left_pad(rows, 0), max_new_tokens=12).tokens
    single = [generate(hybrid, torch.tensor([r]), max_new_tokens=12).tokens[0]
              for r in rows]
    assert batched == single


@pytest.mark.parametrize("kind", ["llama", "llama-tied", "qwen2"])
def test_save_then_load_is_bit_identical(tmp_path, kind):
    _, teacher = pair(kind)
    hybrid = build_hybrid(teacher, [1, 2], "kqvo", seed=4)
    cfg = hybrid_config(hybrid, "kqvo", 4, f"tiny-{kind}", {"note": "test"})
    save_hybrid(hybrid, cfg, tmp_path)
    loaded = load_model_folder(tmp_path)
    assert loaded.layer_kinds == ["attention", "mamba2", "mamba2"]
    ids = random_ids(2, 10)
    assert torch.equal(loaded(ids), hybrid(ids))
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["mamba_layers"] == [1, 2] and d["init"] == "kqvo" and d["base_model"] == f"tiny-{kind}"
    assert d["ssm"]["state_size"] == teacher.cfg.head_dim


def test_bad_layers_init_and_folders_are_refused(tmp_path):
    _, teacher = pair("llama")
    with pytest.raises(HybridError, match="out of range"):
        build_hybrid(teacher, [3], "skip")
    with pytest.raises(HybridError, match="unknown init"):
        build_hybrid(teacher, [0], "zeros")
    with pytest.raises(HybridError, match="duplicate"):
        build_hybrid(teacher, [0, 0], "skip")
    with pytest.raises(HybridError, match="already mamba2"):
        build_hybrid(build_hybrid(teacher, [0], "skip"), [0], "skip")
    hybrid = build_hybrid(teacher, [0], "skip")
    save_hybrid(hybrid, hybrid_config(hybrid, "skip", 0, "tiny"), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(WeightImportError, match="cannot read"):
        load_hybrid(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rad_hybrid"}))
    with pytest.raises(HybridError):
        load_hybrid(tmp_path)


def test_throughput_cache_replication_decodes_like_the_original_row():
    """`rad bench throughput` times batch-B decode from one prefilled row copied to B rows: each
    copy must continue exactly like the original (KV and Mamba2 state alike)."""
    from rad.runtime.cache import replicate

    _, teacher = pair("llama")
    hybrid = build_hybrid(teacher, [1], "kqvo", seed=0)
    ids = random_ids(1, 9)
    one = hybrid.allocate_cache(1, 12)
    hybrid(ids, cache=one)
    many = hybrid.allocate_cache(3, 12)
    replicate(one, many)
    nxt = torch.tensor([[5]])
    expected = hybrid(nxt, cache=one)
    got = hybrid(nxt.expand(3, 1), cache=many)
    for row in got:
        torch.testing.assert_close(row, expected[0], rtol=1e-5, atol=1e-5)
