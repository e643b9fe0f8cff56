"""The rad runtime against HF transformers, and its cache, padding and skip invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import KINDS, TOL, VOCAB, ours_from_hf, pair

from rad.runtime.config import ModelConfig, UnsupportedModelError
from rad.runtime.decode import generate, left_pad
from rad.runtime.linear import set_weight_layout
from rad.runtime.weights import WeightImportError, convert_hf_state_dict, load_decoder


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_hf(kind):
    hf, ours = pair(kind)
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 40))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    mask[2, :1] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = ours(ids, mask)
    valid = mask.bool()
    assert (got - ref)[valid].abs().max() <= TOL
    if kind == "llama3-rope":  # positions past original_max_position_embeddings exercise scaling
        long_ids = torch.randint(0, VOCAB, (1, 150))
        with torch.no_grad():
            assert (ours(long_ids) - hf(long_ids).logits).abs().max() <= TOL


def test_config_reads_bias_and_rope():
    assert ModelConfig.from_hf(pair("qwen2")[0].config.to_dict()).qkv_bias
    cfg = ModelConfig.from_hf(pair("llama3-rope")[0].config.to_dict())
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_theta == 500000.0
    # transformers 4.x spelling of the same thing
    old = {**pair("llama")[0].config.to_dict(), "rope_theta": 1234.0,
           "rope_scaling": {"type": "linear", "factor": 2.0}}
    old.pop("rope_parameters")
    cfg = ModelConfig.from_hf(old)
    assert cfg.rope_theta == 1234.0 and cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(UnsupportedModelError, match="llama, qwen2, mistral"):
        ModelConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelConfig.from_hf({**old, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_weight_import_accounts_for_every_key():
    hf, _ = pair("llama")
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    sd = dict(hf.state_dict())
    extra = {**sd, "model.layers.0.self_attn.q_norm.weight": torch.ones(8)}
    with pytest.raises(WeightImportError, match="unconsumed"):
        convert_hf_state_dict(cfg, extra)
    missing = {k: v for k, v in sd.items() if k != "model.layers.2.mlp.up_proj.weight"}
    with pytest.raises(WeightImportError, match="missing"):
        convert_hf_state_dict(cfg, missing)
    wrong = {**sd, "model.norm.weight": torch.ones(7)}
    with pytest.raises(WeightImportError, match="shape"):
        convert_hf_state_dict(cfg, wrong)
    k_wrong = {**sd, "model.layers.1.self_attn.k_proj.weight": torch.ones(17, 48)}
    with pytest.raises(WeightImportError, match="k_proj.weight: shape"):
        convert_hf_state_dict(cfg, k_wrong)


def test_fused_projections_keep_hf_order():
    hf, ours = pair("qwen2")
    attn, hf_attn = ours.layers[1].mixer, hf.model.layers[1].self_attn
    q, k, v = attn.split_qkv(attn.qkv_proj.weight, dim=0)
    assert torch.equal(q, hf_attn.q_proj.weight) and torch.equal(v, hf_attn.v_proj.weight)
    assert torch.equal(attn.split_qkv(attn.qkv_proj.bias, dim=0)[1], hf_attn.k_proj.bias)
    gate, up = ours.layers[2].mlp.gate_up_proj.weight.chunk(2, dim=0)
    assert torch.equal(gate, hf.model.layers[2].mlp.gate_proj.weight)
    assert torch.equal(up, hf.model.layers[2].mlp.up_proj.weight)


def test_save_and_load_folder(tmp_path):
    hf, ours = pair("qwen2")
    hf.save_pretrained(tmp_path)
    loaded = load_decoder(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids), ours(ids))


def test_weight_layouts_agree():
    """The in-major fast layout against nn.Linear's out-major layout (the slow reference)."""
    hf, _ = pair("qwen2")
    model = ours_from_hf(hf)
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        set_weight_layout(model, in_major=True)
        fast = model(ids)
        assert not model.layers[0].mixer.qkv_proj.weight.is_contiguous()
        set_weight_layout(model, in_major=False)
        ref = model(ids)
        assert model.layers[0].mixer.qkv_proj.weight.is_contiguous()
    assert (fast - ref).abs().max() <= 1e-5
    # Decoding picks the layout by batch size; the values never change.
    model.allocate_cache(1, 8)
    assert not model.layers[0].mlp.down_proj.weight.is_contiguous()
    model.allocate_cache(3, 8)
    assert model.layers[0].mlp.down_proj.weight.is_contiguous()
    with torch.no_grad():
        assert torch.equal(model(ids), ref)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_prefill_then_decode_equals_full_forward(data, kind):
    """Prefill a prefix (left-padded), then feed the rest in chunks: same logits as one pass."""
    _, model = pair(kind)
    batch = data.draw(st.integers(1, 3), label="batch")
    lengths = data.draw(st.lists(st.integers(1, 14), min_size=batch, max_size=batch),
                        label="lengths")
    width = max(lengths)
    extra = data.draw(st.integers(1, 6), label="decode steps")
    split = data.draw(st.integers(1, width), label="prefill length")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
    ids, mask = left_pad(rows, pad_id=0)
    ids = torch.cat([ids, torch.randint(0, VOCAB, (batch, extra), generator=g)], 1)
    mask = torch.cat([mask, torch.ones(batch, extra, dtype=torch.long)], 1)
    total = ids.shape[1]
    with torch.no_grad():
        full = model(ids, mask)
        cache = model.allocate_cache(batch, total)
        parts = [model(ids[:, :split], mask[:, :split], cache=cache)]
        pos = split
        while pos < total:
            step = data.draw(st.integers(1, 3), label="chunk")
            parts.append(model(ids[:, pos:pos + step], mask[:, pos:pos + step], cache=cache))
            pos += step
    incremental = torch.cat(parts, 1)
    valid = mask.bool()
    assert cache.length == total
    assert (incremental - full)[valid].abs().max() <= TOL


def test_rollback_then_redecode_is_identical():
    _, model = pair("llama")
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        cache = model.allocate_cache(2, 20)
        model(ids[:, :6], cache=cache)
        first = model(ids[:, 6:], cache=cache)
        cache.rollback(6)
        model(torch.randint(0, VOCAB, (2, 3)), cache=cache)  # a rejected draft
        cache.rollback(6)
        again = model(ids[:, 6:], cache=cache)
    assert torch.equal(first, again)
    with pytest.raises(ValueError):
        cache.rollback(11)


def test_generate_matches_hf_generate():
    hf, ours = pair("llama")
    rows = [[5, 6, 7, 8, 9], [11, 12]]
    ids, mask = left_pad(rows, pad_id=0)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12,
                      do_sample=False, pad_token_id=0)[:, ids.shape[1]:].tolist()
    got = generate(ours, ids, mask, max_new_tokens=12, stop_at_eos=False).tokens
    assert got == ref
    # Each row alone (no padding) gives the same tokens as in the padded batch.
    for row, expected in zip(rows, got, strict=True):
        alone = generate(ours, torch.tensor([row]), max_new_tokens=12, stop_at_eos=False)
        assert alone.tokens[0] == expected


def test_generation_stops_at_eos():
    _, ours = pair("llama")
    ids = torch.tensor([[1, 2, 3]])
    free = generate(ours, ids, max_new_tokens=8, stop_at_eos=False).tokens[0]
    eos = free[3]
    stopped = generate(ours, ids, max_new_tokens=8, eos_token_ids={eos}).tokens[0]
    assert stopped == free[: free.index(eos) + 1]


# -- skip sets ---------------------------------------------------------------------------------
def _block_inputs(model, ids, skip):
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
             for blk in model.layers]
    try:
        with torch.no_grad():
            out = model(ids, skip=skip)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def test_empty_skip_is_full_model():
    _, model = pair("qwen2")
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids, skip=()))
        assert torch.equal(model(ids), model(ids, skip=frozenset()))


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_skipping_a_layer_acts_only_through_that_layer(layer):
    hf, model = pair("llama")
    ids = torch.randint(0, VOCAB, (2, 11))
    full, full_inputs = _block_inputs(model, ids, ())
    skipped, skip_inputs = _block_inputs(model, ids, {layer})
    for i in range(layer + 1):  # everything up to the skipped layer's input is untouched
        assert torch.equal(full_inputs[i], skip_inputs[i])
    assert not torch.allclose(full, skipped)
    # Reference: the same model with that layer's attention output zeroed (o_proj = 0).
    ref_model = ours_from_hf(hf)
    with torch.no_grad():
        ref_model.layers[layer].mixer.o_proj.weight.zero_()
        assert (ref_model(ids) - skipped).abs().max() <= TOL


def test_skipping_every_attention_layer_is_a_valid_model():
    _, model = pair("llama3-rope")
    ids, mask = left_pad([[3, 4, 5, 6], [7, 8]], pad_id=0)
    everything = set(range(model.cfg.n_layers))
    with torch.no_grad():
        out = model(ids, mask, skip=everything)
    assert torch.isfinite(out).all()
    # With no attention, each token's logits depend on that token alone.
    with torch.no_grad():
        single = model(torch.tensor([[6]]), skip=everything)
    assert (out[0, -1] - single[0, 0]).abs().max() <= TOL
    with pytest.raises(ValueError, match="out of range"):
        model(ids, skip={model.cfg.n_layers})


def test_skip_with_cache_equals_skip_without():
    _, model = pair("qwen2")
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        full = model(ids, skip={1})
        cache = model.allocate_cache(1, 12)
        parts = [model(ids[:, :5], cache=cache, skip={1})]
        parts += [model(ids[:, i:i + 1], cache=cache, skip={1}) for i in range(5, 12)]
    assert (torch.cat(parts, 1) - full).abs().max() <= TOL


def test_bf16_runs_close_to_fp32():
    hf, fp32 = pair("llama")
    bf16 = ours_from_hf(hf, dtype=torch.bfloat16)
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        a, raw = fp32(ids), bf16(ids)
    # It really computes in bf16 (no silent fp32 weights or upcast logits), yet stays close.
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert raw.dtype == torch.bfloat16
    b = raw.float()
    assert torch.isfinite(b).all() and not torch.equal(a, b)
    assert (a - b).abs().max() < 0.1 * a.abs().max()


# -- the embedded teacher ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher():
    from harness.models import load_model
    return load_model("smollm2-135m-instruct")


@pytest.mark.teacher
def test_embedded_teacher_matches_hf(teacher):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(teacher.folder, dtype=torch.float32).eval()
    cfg = teacher.model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_size) == (
        30, 9, 3, 64, 576)
    ids, mask = left_pad([teacher.tokenizer("Janet has 3 apples and buys 5 more.")["input_ids"],
                          teacher.tokenizer("def add(a, b):")["input_ids"]],
                         teacher.pad_token_id)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = teacher.model(ids, mask)
    assert (got - ref)[mask.bool()].abs().max() <= TOL
    ref_tokens = hf.generate(ids, attention_mask=mask, max_new_tokens=16, min_new_tokens=16,
                             do_sample=False, pad_token_id=teacher.pad_token_id)
    got_tokens = generate(teacher.model, ids, mask, 16, stop_at_eos=False).tokens
    assert got_tokens == ref_tokens[:, ids.shape[1]:].tolist()


@pytest.mark.teacher
def test_embedded_teacher_chat_answers(teacher):
    from rad.runtime.prompts import encode_prompts

    ids, mask = encode_prompts(teacher.tokenizer, ["What is the capital of France?"], True,
                               teacher.pad_token_id)
    out = generate(teacher.model, ids, mask, 20, teacher.eos_token_ids)
    assert "Paris" in teacher.tokenizer.decode(out.tokens[0])


def test_import_does_not_alias_the_source_weights():
    hf, _ = pair("llama")
    model = ours_from_hf(hf)
    before = hf.model.layers[0].self_attn.o_proj.weight.clone()
    with torch.no_grad():
        model.layers[0].mixer.o_proj.weight.zero_()
    assert torch.equal(hf.model.layers[0].self_attn.o_proj.weight, before)
