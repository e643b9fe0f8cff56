"""Plain helpers shared by the tests: tiny random HF models (Llama, Qwen2 with bias, Llama-3
rope) and their rad twins, a sharpened teacher for distillation, the shared data folder and the
one-line error checks. Fixtures live in conftest.py."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
import torch

from rad.method.distill.loop import TrainData
from rad.method.distill.losses import teacher_targets
from rad.method.replace import build_hybrid
from rad.runtime.config import ModelConfig
from rad.runtime.weights import build_decoder, convert_hf_state_dict

TOL = 1e-4
VOCAB = 97
N_LAYERS = 3  # every tiny_hf config

# The data folder shipped beside the checkout; RAD_DATA_DIR overrides it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data() -> Path:
    return Path(os.environ.get("RAD_DATA_DIR") or SHARED_DATA)


def one_error_line(err: str) -> str:
    """stderr must be exactly one line, `rad: error: ...`."""
    assert err.startswith("rad: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1 and "\r" not in err, err
    return err


def one_line_message(err: pytest.ExceptionInfo) -> str:
    """A raised error's message must be one non-empty line."""
    message = str(err.value)
    assert message and "\n" not in message and "\r" not in message, message
    return message


def random_ids(n: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


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


@functools.cache
def sharp_teacher():
    """tiny_hf's Llama with attention, MLP output and head scaled x6: at random-init scale
    its layers barely matter (skipping two moves the KL by ~1e-3), which makes a poor test of
    whether distillation recovers them."""
    _, base = pair("llama")
    t = copy.deepcopy(base)
    with torch.no_grad():
        for blk in t.layers:
            for w in (blk.mixer.qkv_proj.weight, blk.mixer.o_proj.weight,
                      blk.mlp.down_proj.weight):
                w.mul_(6)
        t.lm_head.weight.mul_(6)
    return t


def sharp_hybrid(layers=(0, 2), init="skip", seed=0):
    return build_hybrid(sharp_teacher(), list(layers), init, seed)


def loop_data():
    """Teacher targets (top-16 of 97) for 24 train and 6 held-out sequences of 16 tokens."""
    teacher = sharp_teacher()
    train_ids, held_ids = random_ids(24, 16, 1), random_ids(6, 16, 2)
    with torch.no_grad():
        return TrainData(train_ids, teacher_targets(teacher(train_ids), 16),
                         held_ids, teacher_targets(teacher(held_ids), 16))
