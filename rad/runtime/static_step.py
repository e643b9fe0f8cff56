"""The decode path's static-shape step (gpt-fast's shape), compiled with `torch.compile`.

Static means: the whole preallocated cache is attended under a mask; the write slots, the RoPE
positions and the ring slots of the Mamba2 snapshots are tensors; nothing inside branches on a
value. So one graph serves every step of one shape (batch, cache length, new tokens, layer
plan = each layer's kind or "skip"): inductor with weight freezing on CPU (freezing packs the
fp32 weights for MKL, ~1.7x at batch 8), CUDA graphs (`reduce-overhead`) on GPU.

`Stepper` is what the decode loops call: it feeds T new real tokens per row into a cache through
the compiled step where the switch (`rad.runtime.compile_mode`) says so, else through the eager
`Decoder.forward`, which stays the reference (the tests compare the two). Prefill and padded
calls always run eager: their shapes vary, and they run once per sequence.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from rad.runtime import compile_mode as modes
from rad.runtime.cache import InferenceCache
from rad.runtime.mamba2 import ring_slots
from rad.runtime.model import Decoder, MixerCall

MAX_STEP_TOKENS = 16  # the longest step compiled (speculative verify blocks are gamma + 1)
# A frozen graph holds its own packed copy of the weights (0.54 GB for the embedded teacher in
# fp32), and dynamo frees graphs only all at once: past this many shapes, start afresh.
MAX_LIVE_SHAPES = 8


# -- the step (traced by torch.compile; also runs eagerly in the tests) ------------------------

def static_forward(model: Decoder, plan: tuple[str, ...], tokens, positions, slots, key_valid,
                   ring_slots, cos_table, sin_table, buffers) -> torch.Tensor:
    """Logits (B, T, V) of T new tokens per row, written into the cache buffers in place.

    tokens, positions: (B, T) ids and RoPE positions; slots: (T,) cache slots they fill;
    key_valid: (B, S) slots holding real tokens, these T included; ring_slots: (T + 1,) ring
    slots of the Mamba2 snapshots taken before each token and after the last; cos/sin_table:
    (S, head_dim); buffers: per layer (k, v) for attention, (conv, ssm, conv_ring, ssm_ring)
    for Mamba2 (rings None without rollback), () for a skipped layer.
    """
    h = model.embed(tokens)
    cos = cos_table[positions].to(h.dtype)[:, None]  # (B, 1, T, head_dim)
    sin = sin_table[positions].to(h.dtype)[:, None]
    k_pos = torch.arange(key_valid.shape[1], device=tokens.device)
    causal = k_pos[None, :] <= slots[:, None]  # (T, S)
    mask = (key_valid[:, None, :] & causal[None])[:, None]  # (B, 1, T, S)

    def mixer_call(i: int) -> MixerCall | None:
        kind, buf = plan[i], buffers[i]
        if kind == "attention":
            return lambda attn, x: _attention(attn, x, cos, sin, mask, slots, buf)
        if kind == "mamba2":
            return lambda mixer, x: _mamba2(mixer, x, ring_slots, buf)
        return None  # "skip"

    return model.head(model.run_layers(h, mixer_call))


def _attention(attn, x, cos, sin, mask, slots, buf) -> torch.Tensor:
    """Write this step's K/V into the cache at `slots`, attend the whole cache."""
    k_cache, v_cache = buf
    q, k, v = attn.project(x, cos, sin)
    k_cache.index_copy_(2, slots, k)
    v_cache.index_copy_(2, slots, v)
    return attn.attend_whole_cache(q, k_cache, v_cache, mask)


def _mamba2(mixer, u, ring_slots, buf) -> torch.Tensor:
    conv, ssm, conv_ring, ssm_ring = buf
    z, xBC, dt, A = mixer.project(u, None)  # decode tokens are never padding
    rings = (conv_ring, ssm_ring) if conv_ring is not None else None
    return mixer.readout(mixer.scan_tokens(xBC, dt, A, conv, ssm, rings, ring_slots), z, u.dtype)


# -- compiled graphs, shared by every Stepper of the process ----------------------------------

@dataclass
class CompileStats:
    """What compiling cost this process: the first call of every new shape is timed whole."""
    shapes: int = 0
    compile_s: float = 0.0
    compiled_steps: int = 0
    eager_steps: int = 0

    def as_dict(self) -> dict:
        return {"mode": modes.compile_mode(), "shapes": self.shapes,
                "compile_s": round(self.compile_s, 2), "compiled_steps": self.compiled_steps,
                "eager_steps": self.eager_steps}


@dataclass
class CompiledGraphs:
    """Every compiled step of the process and what is known about them, in one object: the
    graphs (dynamo frees them only all at once), the shapes they serve, the eager steps per
    shape so far (`auto` on CPU compiles a shape after a few), the weights they froze, and the
    cost. `reset` clears all of it; `drop_graphs` only what a graph holds."""
    stats: CompileStats = field(default_factory=CompileStats)
    steps: dict[tuple, tuple] = field(default_factory=dict)  # (id(model), device) -> (ref, fn)
    shapes_seen: set[tuple] = field(default_factory=set)
    eager_counts: dict[tuple, int] = field(default_factory=dict)
    weights: dict[int, tuple[weakref.ref, int]] = field(default_factory=dict)  # id -> version

    def forward_of(self, model: Decoder):
        """`static_forward` of `model`, compiled. The model is a closure variable, not an
        argument: so its weights are graph constants, which inductor's freezing needs."""
        key = (id(model), model.device.type)
        entry = self.steps.get(key)
        if entry is not None and entry[0]() is model:
            return entry[1]
        import torch._dynamo
        # One code object serves every shape and model; dynamo's default of 8 graphs would
        # silently fall back to eager after the 8th.
        torch._dynamo.config.recompile_limit = 256
        torch._dynamo.config.accumulated_recompile_limit = 4096

        def step(*args):
            return static_forward(model, *args)

        if model.device.type == "cuda":
            fn = torch.compile(step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        else:
            fn = torch.compile(step, fullgraph=True, dynamic=False)
        self.steps[key] = (weakref.ref(model), fn)
        return fn

    def drop_graphs(self) -> None:
        """Drop every compiled graph (each holds a frozen copy of the weights); the eager
        counts and the cost so far stay (a shape seen often enough compiles again at once)."""
        import torch._dynamo
        torch._dynamo.reset()
        self.steps.clear()
        self.shapes_seen.clear()
        self.weights.clear()

    def reset(self) -> None:
        """Back to a fresh process: no graphs, no counts, no cost (tests, benches)."""
        self.drop_graphs()
        self.eager_counts.clear()
        self.stats.__init__()

    def check_weights(self, model: Decoder) -> None:
        """Frozen graphs hold the weights as constants: after training or loading new values
        into a model that already has graphs, drop them all (rare, and always correct)."""
        version = _weights_version(model)
        seen = self.weights.get(id(model))
        if seen is not None and seen[0]() is model and seen[1] != version:
            self.drop_graphs()
        self.weights[id(model)] = (weakref.ref(model), version)


def _freezing(device: torch.device, rows: int):
    """Inductor's freezing on CPU for steps of several rows (weights as graph constants, fp32
    packed for MKL: ~1.6x at batch 8). A one-row step gains nothing from packing (it streams
    the weights either way) and is not frozen, so it holds no copy of them. Freezing is read
    when a graph compiles, inside the first call; `options=` of torch.compile does not reach
    it."""
    import torch._inductor.config as inductor_config
    return (inductor_config.patch(freezing=True) if device.type == "cpu" and rows > 1
            else contextlib.nullcontext())


def _weights_version(model: Decoder) -> int:
    total = 0
    for p in model.parameters():
        try:
            total += p._version
        except RuntimeError:  # an inference tensor: cannot be updated in place outside inference
            pass
    return total


GRAPHS = CompiledGraphs()
STATS = GRAPHS.stats  # the benches read the compile cost from here (cleared in place by reset)


class Stepper:
    """Feeds T new real tokens per row into `cache` (skipping the mixers of `skip`) and returns
    their logits (B, T, V): the compiled static step, or the eager forward. One per decode loop:
    it reads the switch and checks the weights once."""

    def __init__(self, model: Decoder, cache: InferenceCache, skip: Collection[int] = ()):
        self.model, self.cache, self.skip = model, cache, frozenset(skip)
        self.mode = modes.compile_mode()
        self.plan = tuple("skip" if i in self.skip else kind
                          for i, kind in enumerate(model.layer_kinds))
        self.device = model.device
        self._bufs: tuple | None = None  # the cache's buffers per layer, gathered once
        # How far the cache's Mamba2 states can roll back (fixed when it was allocated).
        self.rollback = max((getattr(st, "max_rollback", 0) for st in cache.states), default=0)
        if self.mode != "off":
            GRAPHS.check_weights(model)

    def __call__(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`."""
        if self._compiled(tokens.shape[1]):
            logits = self._step(tokens)
            return logits[:, -1:] if last_only else logits
        STATS.eager_steps += 1
        return self.model(tokens, cache=self.cache, skip=self.skip, last_only=last_only)

    def _key(self, T: int) -> tuple:
        c = self.cache
        return (id(self.model), c.batch, c.max_len, T, self.plan, self.rollback,
                self.model.dtype, str(self.device))

    def _compiled(self, T: int) -> bool:
        if self.mode == "off" or T > MAX_STEP_TOKENS or self.cache.length == 0:
            return False
        if self.rollback and T > self.rollback and "mamba2" in self.plan:
            return False  # eager scans such a block in chunks, with one snapshot only
        if self.mode == "on" or self.device.type == "cuda":
            return True
        key = self._key(T)
        if key in GRAPHS.shapes_seen:
            return True
        counts = GRAPHS.eager_counts
        counts[key] = counts.get(key, 0) + 1
        return counts[key] > modes.AUTO_CPU_STEPS

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        c, model = self.cache, self.model
        B, T = tokens.shape
        mamba = [st for st, kind in zip(c.states, self.plan, strict=True) if kind == "mamba2"]
        for st in mamba:
            st.check_start(c.length)
        start, positions, _ = c.append(torch.ones(B, T, dtype=torch.bool, device=self.device))
        snapshot_slots = ring_slots(start, T, self.rollback + 1, self.device)  # every layer
        cos, sin = model.rope_table(c.max_len, self.device)
        if self._bufs is None:
            self._bufs = tuple(self._buffers(st, kind)
                               for st, kind in zip(c.states, self.plan, strict=True))
            if self.device.type == "cuda":
                from torch import _dynamo
                _dynamo.mark_static_address(c.key_valid)
        key = self._key(T)
        first = key not in GRAPHS.shapes_seen
        if first and len(GRAPHS.shapes_seen) >= MAX_LIVE_SHAPES:
            GRAPHS.drop_graphs()
            GRAPHS.check_weights(model)
        t0 = time.perf_counter()
        with torch.inference_mode(), _freezing(self.device, B * T):
            logits = GRAPHS.forward_of(model)(
                self.plan, tokens.to(self.device), positions,
                start + torch.arange(T, device=self.device),
                c.key_valid, snapshot_slots, cos[:c.max_len], sin[:c.max_len], self._bufs)
        if self.device.type == "cuda":
            logits = logits.clone()  # a CUDA graph's output is overwritten by its next replay
        if first:
            GRAPHS.shapes_seen.add(key)
            STATS.shapes += 1
            STATS.compile_s += time.perf_counter() - t0
        STATS.compiled_steps += 1
        for st in mamba:
            st.advance(T, snapshotted=True)
        return logits

    def _buffers(self, state, kind: str) -> tuple:
        if kind == "attention":
            bufs = (state.k, state.v)
        elif kind == "mamba2":
            bufs = (state.conv, state.ssm, state.conv_ring, state.ssm_ring)
        else:
            return ()
        if self.device.type == "cuda":  # CUDA graphs may mutate only inputs at fixed addresses
            from torch import _dynamo
            for t in bufs:
                if t is not None:
                    _dynamo.mark_static_address(t)
        return bufs
