"""Hybrids out of the harness: a hybrid `Decoder` <-> a stock transformers hybrid architecture.

One target today, `bamba` (`BambaForCausalLM`, tested with transformers 5.24; vLLM lists the same
architecture name): per-layer attention or Mamba2 mixer + SwiGLU MLP, RMSNorm, RoPE. It
expresses our hybrid exactly:

- Mamba2: `mamba_n_groups` = our SSM heads (C has one group per head, and so does our gated
  norm: group size = intermediate / n_groups = head dim). Our x and B have the KV width and are
  shared by the heads of a GQA group, so their in_proj rows and conv channels are *repeated* to
  every head (exact: the conv is depthwise and silu acts per channel). Order: [z | x B C | dt].
- Attention: RoPE with `partial_rotary_factor = 1`; one `attention_bias` flag for q/k/v/o, so a
  Qwen2 student (q/k/v bias, no o bias) exports with o_proj bias = 0. One `mamba_proj_bias` flag
  for in_proj and out_proj, likewise.
- `config.json` also carries `rad_hybrid` (our `HybridConfig`): transformers keeps an unknown key
  as an attribute and ignores it, and loading back uses it to undo the repetition exactly.

Known difference, by design of transformers' Bamba: it zeroes padded *inputs* of a Mamba2 layer,
so with an in_proj bias (Qwen2 students) the bias of padded positions reaches the conv window of
the first `conv_kernel - 1` real tokens of a left-padded row; this runtime zeroes the conv
inputs themselves. Unpadded rows (and batch-1 generation) agree; bias-free students agree always.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rad.method.replace import HybridConfig, HybridError
from rad.registry import Registry
from rad.runtime.mamba2 import Mamba2, Mamba2Sizes
from rad.runtime.model import Attention, Decoder
from rad.runtime.weights import build_decoder

HYBRID_KEY = "rad_hybrid"  # config.json key holding our HybridConfig


class ExportError(ValueError):
    """The hybrid cannot be expressed exactly by the target (the message says why)."""


@dataclass(frozen=True)
class ExportTarget:
    name: str  # `--to`
    model_type: str  # the stock config.json model_type
    architecture: str  # the transformers class (and the name vLLM lists)
    to_hf: Callable[[Decoder, HybridConfig], tuple[dict, dict[str, torch.Tensor]]]
    from_hf: Callable[[dict, dict[str, torch.Tensor]], tuple[HybridConfig, dict]]


EXPORT_TARGETS: Registry[ExportTarget] = Registry("export target")


def target_for_model_type(model_type: str | None) -> ExportTarget | None:
    return next((t for _, t in EXPORT_TARGETS.items() if t.model_type == model_type), None)


# -- head repetition (x and B: KV width <-> every head) --------------------------------------

def _repeat_heads(t: torch.Tensor, n_kv: int, rep: int) -> torch.Tensor:
    """Rows (n_kv * per_head, ...) -> (n_kv * rep * per_head, ...), each KV head's block `rep`
    times in a row (the order `repeat_interleave` gives the runtime's heads)."""
    blocks = t.reshape(n_kv, -1, *t.shape[1:])
    return blocks.repeat_interleave(rep, dim=0).reshape(-1, *t.shape[1:])


def _unrepeat_heads(t: torch.Tensor, n_kv: int, rep: int, what: str) -> torch.Tensor:
    blocks = t.reshape(n_kv, rep, -1, *t.shape[1:])
    if not torch.equal(blocks, blocks[:, :1].expand_as(blocks)):
        raise ExportError(f"{what}: the heads of one KV group differ, so this folder is not an "
                          "exported rad hybrid (its Mamba2 x/B rows must repeat per group)")
    return blocks[:, 0].reshape(-1, *t.shape[1:])


# -- bamba --------------------------------------------------------------------------------------

def _sizes(model: Decoder) -> Mamba2Sizes:
    sizes = {blk.mixer.sizes for blk in model.layers if isinstance(blk.mixer, Mamba2)}
    if len(sizes) > 1:
        raise ExportError("the Mamba2 layers have different sizes; Bamba has one set for all")
    return sizes.pop() if sizes else Mamba2Sizes.from_model_config(model.cfg)


def _bamba_config(model: Decoder, hybrid: HybridConfig) -> dict:
    cfg, s = model.cfg, _sizes(model)
    if cfg.sliding_window is not None:
        raise ExportError("Bamba has no sliding-window attention (the model sets "
                          f"sliding_window={cfg.sliding_window})")
    if s.norm_eps != cfg.rms_norm_eps:
        raise ExportError(f"Bamba's gated norm uses rms_norm_eps ({cfg.rms_norm_eps}); this "
                          f"hybrid's Mamba2 norm uses {s.norm_eps}")
    if s.conv_kernel < 2:
        raise ExportError("Bamba's conv needs a kernel of at least 2")
    inner = s.n_heads * s.head_dim
    expand = inner / cfg.hidden_size
    expand = int(expand) if expand.is_integer() else expand
    if int(expand * cfg.hidden_size) != inner:
        raise ExportError(f"Mamba2 width {inner} is not mamba_expand x hidden_size "
                          f"({cfg.hidden_size}) in floating point")
    rope = {"rope_type": (cfg.rope_scaling or {}).get("rope_type", "default"),
            "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {}),
            "partial_rotary_factor": 1.0}
    eos = list(cfg.eos_token_ids)
    return {
        "model_type": "bamba", "architectures": ["BambaForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "attention_bias": cfg.qkv_bias or cfg.o_bias, "mlp_bias": cfg.mlp_bias,
        "rope_parameters": rope,
        "attn_layer_indices": [i for i, k in enumerate(model.layer_kinds)
                               if k == Attention.kind],
        "mamba_n_heads": s.n_heads, "mamba_d_head": s.head_dim, "mamba_n_groups": s.n_heads,
        "mamba_d_state": s.state_size, "mamba_d_conv": s.conv_kernel, "mamba_expand": expand,
        "mamba_chunk_size": s.chunk_size, "mamba_conv_bias": True,
        "mamba_proj_bias": s.in_proj_bias or s.out_proj_bias,
        "torch_dtype": str(model.dtype).removeprefix("torch."),
        HYBRID_KEY: hybrid.to_dict(),
    }


def _bias_or_zeros(bias: torch.Tensor | None, width: int, like: torch.Tensor) -> torch.Tensor:
    return bias if bias is not None else torch.zeros(width, dtype=like.dtype, device=like.device)


def bamba_state_dict(model: Decoder, config: dict) -> dict[str, torch.Tensor]:
    """Our parameters under Bamba's names and layout (x/B repeated per head, biases the single
    flags require filled with zeros)."""
    attn_bias, proj_bias = config["attention_bias"], config["mamba_proj_bias"]
    sd = {"model.embed_tokens.weight": model.embed.weight,
          "model.final_layernorm.weight": model.norm.weight}
    if not model.cfg.tie_word_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, blk in enumerate(model.layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = blk.mixer_norm.weight
        sd[p + "pre_ff_layernorm.weight"] = blk.mlp_norm.weight
        gate, up = blk.mlp.gate_up_proj.weight.chunk(2, dim=0)
        sd[p + "feed_forward.gate_proj.weight"], sd[p + "feed_forward.up_proj.weight"] = gate, up
        sd[p + "feed_forward.down_proj.weight"] = blk.mlp.down_proj.weight
        if blk.mlp.gate_up_proj.bias is not None:
            gate_b, up_b = blk.mlp.gate_up_proj.bias.chunk(2, dim=0)
            sd[p + "feed_forward.gate_proj.bias"], sd[p + "feed_forward.up_proj.bias"] = \
                gate_b, up_b
            sd[p + "feed_forward.down_proj.bias"] = blk.mlp.down_proj.bias
        mixer = blk.mixer
        if isinstance(mixer, Attention):
            q, k, v = mixer.split_qkv(mixer.qkv_proj.weight, dim=0)
            for name, w in (("q", q), ("k", k), ("v", v), ("o", mixer.o_proj.weight)):
                sd[p + f"self_attn.{name}_proj.weight"] = w
            if attn_bias:
                b = mixer.qkv_proj.bias
                parts = (mixer.split_qkv(b, dim=0) if b is not None
                         else tuple(torch.zeros_like(w[:, 0]) for w in (q, k, v)))
                for name, bias in zip("qkv", parts, strict=True):
                    sd[p + f"self_attn.{name}_proj.bias"] = bias
                sd[p + "self_attn.o_proj.bias"] = _bias_or_zeros(
                    mixer.o_proj.bias, mixer.o_proj.out_features, mixer.o_proj.weight)
            continue
        s = mixer.sizes
        rep = s.n_heads // s.n_kv_heads

        def expanded(t: torch.Tensor, conv: bool = False, s=s, rep=rep) -> torch.Tensor:
            """in_proj rows ([z x B C dt]) or conv channels ([x B C]) in Bamba's layout."""
            parts = list(t.split(s.in_proj_widths[1:4] if conv else s.in_proj_widths, dim=0))
            i_x = 0 if conv else 1
            parts[i_x] = _repeat_heads(parts[i_x], s.n_kv_heads, rep)
            parts[i_x + 1] = _repeat_heads(parts[i_x + 1], s.n_kv_heads, rep)
            return torch.cat(parts, dim=0)

        m = p + "mamba."
        sd[m + "in_proj.weight"] = expanded(mixer.in_proj.weight)
        if proj_bias:
            sd[m + "in_proj.bias"] = expanded(_bias_or_zeros(
                mixer.in_proj.bias, mixer.in_proj.out_features, mixer.in_proj.weight))
            sd[m + "out_proj.bias"] = _bias_or_zeros(
                mixer.out_proj.bias, mixer.out_proj.out_features, mixer.out_proj.weight)
        sd[m + "conv1d.weight"] = expanded(mixer.conv_weight, conv=True)
        sd[m + "conv1d.bias"] = expanded(mixer.conv_bias, conv=True)
        for name in ("dt_bias", "A_log", "D"):
            sd[m + name] = getattr(mixer, name)
        sd[m + "norm.weight"] = mixer.norm.weight
        sd[m + "out_proj.weight"] = mixer.out_proj.weight
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def bamba_to_hf(model: Decoder, hybrid: HybridConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    config = _bamba_config(model, hybrid)
    return config, bamba_state_dict(model, config)


def _take_bias(sd: dict, key: str, ours: bool) -> torch.Tensor | None:
    """A bias the file holds; dropped (it must be all zero) where our model has none."""
    bias = sd.pop(key, None)
    if ours:
        if bias is None:
            raise ExportError(f"{key} is missing")
        return bias
    if bias is not None and bias.count_nonzero():
        raise ExportError(f"{key} is not zero, and the hybrid recorded in config.json has no "
                          "such bias")
    return None


def bamba_from_hf(config: dict, hf_sd: dict[str, torch.Tensor]) -> tuple[HybridConfig, dict]:
    """(our HybridConfig, our state dict) from an exported Bamba folder's config and weights."""
    if HYBRID_KEY not in config:
        raise ExportError("this Bamba folder was not exported by rad-harness (config.json has no "
                          f"'{HYBRID_KEY}'); stock Bamba's Mamba2 layers (x per head, shared "
                          "B/C groups) have no exact equivalent in this runtime")
    try:
        hybrid = HybridConfig.from_dict(config[HYBRID_KEY])
    except HybridError as e:
        raise ExportError(f"config.json's {HYBRID_KEY} is invalid: {e}") from None
    cfg, s = hybrid.base, hybrid.ssm
    sd = dict(hf_sd)
    out = {"embed.weight": sd.pop("model.embed_tokens.weight"),
           "norm.weight": sd.pop("model.final_layernorm.weight")}
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd.pop("lm_head.weight")
    for i, kind in enumerate(hybrid.layer_kinds):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        out[o + "mixer_norm.weight"] = sd.pop(p + "input_layernorm.weight")
        out[o + "mlp_norm.weight"] = sd.pop(p + "pre_ff_layernorm.weight")
        out[o + "mlp.gate_up_proj.weight"] = torch.cat(
            [sd.pop(p + "feed_forward.gate_proj.weight"),
             sd.pop(p + "feed_forward.up_proj.weight")])
        out[o + "mlp.down_proj.weight"] = sd.pop(p + "feed_forward.down_proj.weight")
        if cfg.mlp_bias:
            out[o + "mlp.gate_up_proj.bias"] = torch.cat(
                [sd.pop(p + "feed_forward.gate_proj.bias"),
                 sd.pop(p + "feed_forward.up_proj.bias")])
            out[o + "mlp.down_proj.bias"] = sd.pop(p + "feed_forward.down_proj.bias")
        if kind == Attention.kind:
            a = p + "self_attn."
            out[o + "mixer.qkv_proj.weight"] = torch.cat(
                [sd.pop(a + f"{n}_proj.weight") for n in "qkv"])
            out[o + "mixer.o_proj.weight"] = sd.pop(a + "o_proj.weight")
            biases = [_take_bias(sd, a + f"{n}_proj.bias", cfg.qkv_bias) for n in "qkv"]
            if cfg.qkv_bias:
                out[o + "mixer.qkv_proj.bias"] = torch.cat(biases)
            o_bias = _take_bias(sd, a + "o_proj.bias", cfg.o_bias)
            if o_bias is not None:
                out[o + "mixer.o_proj.bias"] = o_bias
            continue
        m, rep = p + "mamba.", s.n_heads // s.n_kv_heads

        def collapsed(t: torch.Tensor, conv: bool, what: str, rep=rep) -> torch.Tensor:
            widths = list(s.in_proj_widths[1:4] if conv else s.in_proj_widths)
            i_x = 0 if conv else 1
            widths[i_x] *= rep
            widths[i_x + 1] *= rep
            parts = list(t.split(widths, dim=0))
            parts[i_x] = _unrepeat_heads(parts[i_x], s.n_kv_heads, rep, what)
            parts[i_x + 1] = _unrepeat_heads(parts[i_x + 1], s.n_kv_heads, rep, what)
            return torch.cat(parts, dim=0)

        out[o + "mixer.in_proj.weight"] = collapsed(sd.pop(m + "in_proj.weight"), False,
                                                    m + "in_proj.weight")
        in_bias = _take_bias(sd, m + "in_proj.bias", s.in_proj_bias)
        if in_bias is not None:
            out[o + "mixer.in_proj.bias"] = collapsed(in_bias, False, m + "in_proj.bias")
        out_bias = _take_bias(sd, m + "out_proj.bias", s.out_proj_bias)
        if out_bias is not None:
            out[o + "mixer.out_proj.bias"] = out_bias
        out[o + "mixer.conv_weight"] = collapsed(sd.pop(m + "conv1d.weight"), True,
                                                 m + "conv1d.weight")
        out[o + "mixer.conv_bias"] = collapsed(sd.pop(m + "conv1d.bias"), True,
                                               m + "conv1d.bias")
        for name in ("dt_bias", "A_log", "D"):
            out[o + f"mixer.{name}"] = sd.pop(m + name)
        out[o + "mixer.norm.weight"] = sd.pop(m + "norm.weight")
        out[o + "mixer.out_proj.weight"] = sd.pop(m + "out_proj.weight")
    if sd:
        raise ExportError(f"unconsumed weights {sorted(sd)[:3]} ({len(sd)} in all)")
    return hybrid, out


def load_exported(config: dict, hf_sd: dict[str, torch.Tensor], dtype=torch.float32,
                  device="cpu") -> Decoder:
    """Our runtime's model from an exported folder's config.json and weights."""
    target = target_for_model_type(config.get("model_type"))
    if target is None:
        raise ExportError(f"model_type {config.get('model_type')!r} is no export target")
    try:
        hybrid, sd = target.from_hf(config, hf_sd)
    except KeyError as e:
        raise ExportError(f"weight {e} is missing") from None
    return build_decoder(hybrid.base, sd, dtype=dtype, device=device,
                         layer_kinds=hybrid.layer_kinds, ssm=hybrid.ssm)


EXPORT_TARGETS.register("bamba", ExportTarget("bamba", "bamba", "BambaForCausalLM",
                                              bamba_to_hf, bamba_from_hf))
