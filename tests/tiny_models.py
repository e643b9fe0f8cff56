"""Tiny random HF models (Llama, Qwen2 with bias, Llama-3 rope) and their rad twins."""

from __future__ import annotations

import torch

from rad.runtime.config import ModelConfig
from rad.runtime.weights import build_decoder, convert_hf_state_dict

TOL = 1e-4
VOCAB = 97


def tiny_hf(kind: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512)
    if kind == "llama":
        cfg, cls = LlamaConfig(**common, tie_word_embeddings=False), LlamaForCausalLM
    elif kind == "llama-tied":
        cfg, cls = LlamaConfig(**common, tie_word_embeddings=True), LlamaForCausalLM
    elif kind == "llama3-rope":
        cfg = LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
        cls = LlamaForCausalLM
    elif kind == "qwen2":
        cfg, cls = Qwen2Config(**common, tie_word_embeddings=True), Qwen2ForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    hf = cls(cfg).eval()
    if kind == "qwen2":  # random init zeroes biases; make them matter
        with torch.no_grad():
            for layer in hf.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                             layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    return hf


def ours_from_hf(hf, dtype=torch.float32):
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    return build_decoder(cfg, convert_hf_state_dict(cfg, hf.state_dict()), dtype=dtype)


KINDS = ["llama", "llama-tied", "llama3-rope", "qwen2"]
_MODELS: dict[str, tuple] = {}


def pair(kind: str):
    """(hf, ours) built once per kind (hypothesis reruns tests many times)."""
    if kind not in _MODELS:
        hf = tiny_hf(kind)
        _MODELS[kind] = (hf, ours_from_hf(hf))
    return _MODELS[kind]
