"""A compact Llama-family decoder: RMSNorm, RoPE (default/linear/llama3), GQA, SwiGLU, optional
q/k/v bias, tied embeddings, a preallocated inference cache and per-layer *mixer* slots.

Each block is `h + mixer(norm(h))` then `h + mlp(norm(h))`. A mixer is attention or Mamba2
(`rad.runtime.mamba2`), both behind one protocol: `allocate_state` + `forward(x, ctx, state)`, and a
state with `rollback` and `nbytes`. `forward(..., skip=...)` drops the mixer sub-layer of the
listed blocks (the residual passes through, the MLP still runs): the self-speculative draft.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rad.runtime.cache import InferenceCache, KVState
from rad.runtime.config import ModelConfig
from rad.runtime.linear import Linear, fast_layout_is_in_major, set_weight_layout
from rad.runtime.mamba2 import Mamba2, Mamba2Sizes


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and cast back before the weight, as HF Llama does (bit-identical
        # to its unfused pow/mean/rsqrt in fp32 and bf16; one kernel instead of five).
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim/2,) and the attention scaling for the configured RoPE."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    return inv_freq, 1.0


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass
class ForwardContext:
    """What every mixer of one forward call shares: RoPE angles, mask, cache write window."""

    cos: torch.Tensor  # (B, 1, T, head_dim)
    sin: torch.Tensor  # (B, 1, T, head_dim)
    start: int  # cache slot of the first new token
    attn_mask: torch.Tensor | None  # (B, 1, T, start+T) bool, True = may attend; None = no mask
    is_causal: bool  # SDPA's own causal mask (only when there is no explicit mask and no prefix)
    token_mask: torch.Tensor  # (B, T) bool, False on left padding


class Attention(nn.Module):
    kind = "attention"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # One fused projection (one weight read, one kernel call per token).
        # Order: [q | k | v] along the output dim (`split_qkv`; forward splits the same order
        # by heads, since q = n_heads * head_dim and k, v = n_kv_heads * head_dim).
        self.qkv_widths = (cfg.q_width, cfg.kv_width, cfg.kv_width)
        self.qkv_proj = Linear(cfg.hidden_size, sum(self.qkv_widths), bias=cfg.qkv_bias)
        self.o_proj = Linear(cfg.q_width, cfg.hidden_size, bias=cfg.o_bias)

    def split_qkv(self, t: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, ...]:
        """q, k, v parts of the fused projection's output (dim=-1) or weight/bias (dim=0)."""
        return t.split(self.qkv_widths, dim=dim)

    def allocate_state(self, batch: int, max_len: int, dtype, device,
                       max_rollback: int = 0) -> KVState:
        del max_rollback  # K/V slots past a rollback are simply overwritten
        shape = (batch, self.n_kv_heads, max_len, self.head_dim)
        return KVState(torch.zeros(shape, dtype=dtype, device=device),
                       torch.zeros(shape, dtype=dtype, device=device))

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (B, H, T, head_dim) and k, v (B, Hkv, T, head_dim), RoPE applied (the eager and the
        compiled step share it)."""
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, -1, self.head_dim)  # (B, T, H + 2*Hkv, head_dim)
        # q and k are adjacent in the fused output: rotate both heads' worth in one go.
        qk, v = qkv.split((self.n_heads + self.n_kv_heads, self.n_kv_heads), dim=2)
        qk = qk.transpose(1, 2)  # (B, H + Hkv, T, head_dim)
        qk = qk * cos + rotate_half(qk) * sin
        q, k = qk.split((self.n_heads, self.n_kv_heads), dim=1)
        return q, k, v.transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor | None, is_causal: bool = False) -> torch.Tensor:
        """SDPA over k, v and o_proj: (B, T, hidden)."""
        B, _, T, _ = q.shape
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             enable_gqa=self.n_heads != self.n_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def attend_whole_cache(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
        """`attend` by hand, for a few queries over a whole preallocated cache under a mask
        (B, 1, T, S), the compiled decode step's shape. SDPA's CPU flash kernel streams the K/V
        at ~8 GB/s (1.6 ms per layer at 8k context); two batched matmuls with the GQA groups
        folded into the rows and one fused masked softmax read it at memory speed. Compared
        with `attend` by test_static_step_logits_match_the_eager_forward
        (tests/test_compiled.py)."""
        B, H, T, D = q.shape
        Hkv = self.n_kv_heads
        q = q.reshape(B, Hkv, (H // Hkv) * T, D)  # query head h reads kv head h // rep, as GQA
        scores = (q @ k_cache.transpose(-1, -2)).view(B, Hkv, H // Hkv, T, -1).float() * D ** -0.5
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
        probs = scores.softmax(-1).to(v_cache.dtype).view(B, Hkv, (H // Hkv) * T, -1)
        out = (probs @ v_cache).view(B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x: torch.Tensor, ctx: ForwardContext, state: KVState | None) -> torch.Tensor:
        T = x.shape[1]
        q, k, v = self.project(x, ctx.cos, ctx.sin)
        if state is not None:
            end = ctx.start + T
            state.k[:, :, ctx.start:end] = k
            state.v[:, :, ctx.start:end] = v
            k, v = state.k[:, :, :end], state.v[:, :, :end]
        return self.attend(q, k, v, ctx.attn_mask, ctx.is_causal)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # Order: [gate | up] along the output dim, fused for the same reason as qkv_proj.
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


# How one forward call runs a layer's mixer: (mixer, normed input) -> mixer output. The eager
# forward, the compiled decode step and the teacher-forced draft differ only here.
MixerCall = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mixer: nn.Module):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, h: torch.Tensor, mix: MixerCall | None) -> torch.Tensor:
        """h + mix(mixer, norm(h)), then h + mlp(norm(h)); `mix` None skips the mixer sub-layer
        (the residual passes through, the MLP still runs: the self-speculative draft)."""
        if mix is not None:
            h = h + mix(self.mixer, self.mixer_norm(h))
        return h + self.mlp(self.mlp_norm(h))


MIXER_KINDS = ("attention", "mamba2")


def make_mixer(kind: str, cfg: ModelConfig, ssm: Mamba2Sizes | None) -> nn.Module:
    if kind == "attention":
        return Attention(cfg)
    if kind == "mamba2":
        return Mamba2(ssm or Mamba2Sizes.from_model_config(cfg))
    raise ValueError(f"unknown mixer kind {kind!r} (known: {', '.join(MIXER_KINDS)})")


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_kinds: Sequence[str] | None = None,
                 ssm: Mamba2Sizes | None = None):
        """layer_kinds: one mixer kind per layer (default all attention); ssm: Mamba2 sizes."""
        super().__init__()
        self.cfg = cfg
        kinds = list(layer_kinds or ["attention"] * cfg.n_layers)
        if len(kinds) != cfg.n_layers:
            raise ValueError(f"{len(kinds)} layer kinds for {cfg.n_layers} layers")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, make_mixer(k, cfg, ssm)) for k in kinds)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        # fp32 cos/sin table, built lazily on the device of the positions (not a buffer, so
        # meta-device construction and state dicts never see it).
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- RoPE table -------------------------------------------------------------------------
    def rope_table(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 cos and sin (>= length, head_dim), grown on demand (never shrunk)."""
        table = self._rope_table
        if table is None or length > table[0].shape[0] or table[0].device != torch.device(device):
            length = max(length, 256, 2 * table[0].shape[0] if table is not None else 0)
            inv_freq, scale = rope_inv_freq(self.cfg)
            pos = torch.arange(length, dtype=torch.float32)
            emb = torch.outer(pos, inv_freq).repeat(1, 2)  # (length, head_dim)
            table = (emb.cos() * scale).to(device), (emb.sin() * scale).to(device)
            self._rope_table = table
        return table

    def rope(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, T, head_dim) in `dtype` for positions (B, T)."""
        need = int(positions.max()) + 1 if positions.numel() else 1
        table = self.rope_table(need, positions.device)
        cos = table[0][positions].to(dtype).unsqueeze(1)  # (B, 1, T, head_dim)
        sin = table[1][positions].to(dtype).unsqueeze(1)
        return cos, sin

    # -- inference state ----------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def layer_kinds(self) -> list[str]:
        return [blk.mixer.kind for blk in self.layers]

    def allocate_cache(self, batch: int, max_len: int, max_rollback: int = 0) -> InferenceCache:
        """State for `batch` rows of up to `max_len` tokens; `max_rollback`: how far back a
        rollback may go (speculative decoding; only SSM states need it)."""
        if self.cfg.sliding_window is not None and max_len > self.cfg.sliding_window:
            raise ValueError(f"context {max_len} exceeds the model's sliding window "
                             f"{self.cfg.sliding_window}, which this runtime does not implement")
        # Inference at a known batch size: store weights in the layout its matmuls read fastest.
        in_major = fast_layout_is_in_major(self.dtype, self.device, batch)
        if in_major == self.lm_head.weight.is_contiguous():  # contiguous means out-major
            set_weight_layout(self, in_major)
        states = [blk.mixer.allocate_state(batch, max_len, self.dtype, self.device, max_rollback)
                  for blk in self.layers]
        return InferenceCache.allocate(states, batch, max_len, self.device)

    def state_bytes(self, batch: int, max_len: int) -> int:
        """Bytes of inference state for `batch` rows of `max_len` tokens (allocated on meta)."""
        return sum(blk.mixer.allocate_state(batch, max_len, self.dtype, "meta").nbytes()
                   for blk in self.layers)

    # -- forward ----------------------------------------------------------------------------
    def _context(self, token_mask: torch.Tensor, cache: InferenceCache | None, dtype):
        B, T = token_mask.shape
        if cache is not None:
            start, positions, key_valid = cache.append(token_mask)
        else:
            start, key_valid = 0, token_mask
            positions = (token_mask.long().cumsum(1) - 1).clamp(min=0)
        cos, sin = self.rope(positions, dtype)
        if bool(key_valid.all()):
            # Fast paths: decode (T=1) needs no mask; a fresh unpadded prefill uses SDPA's causal.
            if T == 1 or start == 0:
                return ForwardContext(cos, sin, start, None, T > 1, token_mask)
        S = start + T
        q_pos = torch.arange(start, S, device=token_mask.device)
        k_pos = torch.arange(S, device=token_mask.device)
        causal = k_pos[None, :] <= q_pos[:, None]  # (T, S)
        # A padded query sees only itself, so its softmax row is never empty (no NaNs); real
        # queries never see padded keys.
        own = k_pos[None, :] == q_pos[:, None]
        mask = (causal[None] & key_valid[:, None, :]) | own[None]  # (B, T, S)
        return ForwardContext(cos, sin, start, mask[:, None], False, token_mask)

    def run_layers(self, h: torch.Tensor,
                   mixer_call: Callable[[int], MixerCall | None]) -> torch.Tensor:
        """THE layer loop (eager forward, compiled decode step, teacher-forced draft):
        `mixer_call(i)` says how layer i's mixer runs in this call, None to skip it."""
        for i, block in enumerate(self.layers):
            h = block(h, mixer_call(i))
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: logits (..., V)."""
        return self.lm_head(self.norm(h))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: InferenceCache | None = None,
        skip: Collection[int] = (),
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V), or (B, 1, V) with `last_only`.

        input_ids: (B, T); attention_mask: (B, T), 0 on left padding; cache: appended to in
        place (positions continue from what it holds); skip: layers whose mixer is bypassed.
        """
        B, T = input_ids.shape
        token_mask = (torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
                      if attention_mask is None else attention_mask.bool())
        bad = [i for i in skip if not 0 <= i < self.cfg.n_layers]
        if bad:
            raise ValueError(f"skip layers {bad} out of range 0..{self.cfg.n_layers - 1}")
        h = self.embed(input_ids)  # (B, T, hidden)
        ctx = self._context(token_mask, cache, h.dtype)
        states = cache.states if cache is not None else [None] * self.cfg.n_layers

        def mixer_call(i: int) -> MixerCall | None:
            state = states[i]
            return None if i in skip else lambda mixer, x: mixer(x, ctx, state)

        h = self.run_layers(h, mixer_call)
        if last_only:
            h = h[:, -1:]
        return self.head(h)
