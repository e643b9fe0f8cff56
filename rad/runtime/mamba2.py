"""A Mamba2 (SSD, Dao & Gu, arXiv 2405.21060) mixer in pure torch, sized like the attention it
replaces (MambaInLlama, arXiv 2408.15237), behind the same mixer protocol as `Attention`.

Per head h (H heads, head dim P, state size N), with a_t = exp(dt_t * A_h):
    S_t = a_t * S_{t-1} + dt_t * x_t B_t^T        S: (P, N)
    y_t = S_t C_t + D_h * x_t
x and B have the attention's KV width and are repeated to all H heads like GQA's K/V; C has the
query width. So v_proj, k_proj and q_proj fit x, B and C directly (state size N = head dim P).

`Mamba2.forward` picks one of the scans of `rad.runtime.ssd` per call: the one-token recurrence
for decoding, mamba-ssm's kernel on CUDA where it imports, else the torch chunked scan.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rad.runtime.config import ModelConfig, UnsupportedModelError
from rad.runtime.linear import Linear
from rad.runtime.ssd import kernel_available, kernel_scan, scan_dtype, ssd_chunked, ssd_step_


@dataclass(frozen=True)
class Mamba2Sizes:
    hidden_size: int
    n_heads: int  # H: SSM heads = attention query heads
    n_kv_heads: int  # heads of x and B, repeated to H (GQA)
    head_dim: int  # P
    state_size: int  # N (= head_dim, so k_proj fits B and q_proj fits C)
    conv_kernel: int = 4
    chunk_size: int = 64
    norm_eps: float = 1e-5
    in_proj_bias: bool = False  # mirrors the attention's q/k/v bias
    out_proj_bias: bool = False  # mirrors the attention's o_proj bias
    # Standard Mamba2 initialisation ranges (mamba_ssm Mamba2.__init__).
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    a_init_range: tuple[float, float] = (1.0, 16.0)

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedModelError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.conv_kernel < 1 or self.chunk_size < 1:
            raise ValueError("conv_kernel and chunk_size must be >= 1")

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **overrides) -> Mamba2Sizes:
        """Sizes of the Mamba2 mixer that replaces one attention layer of `cfg`."""
        return cls(hidden_size=cfg.hidden_size, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                   head_dim=cfg.head_dim, state_size=cfg.head_dim, norm_eps=cfg.rms_norm_eps,
                   in_proj_bias=cfg.qkv_bias, out_proj_bias=cfg.o_bias, **overrides)

    @classmethod
    def from_dict(cls, d: dict) -> Mamba2Sizes:
        d = dict(d)
        d["a_init_range"] = tuple(d.get("a_init_range", cls.a_init_range))
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def inner(self) -> int:  # z and y width
        return self.n_heads * self.head_dim

    @property
    def in_proj_widths(self) -> tuple[int, int, int, int, int]:
        """Order: [z | x | B | C | dt] along in_proj's output dim."""
        H, Hkv, P, N = self.n_heads, self.n_kv_heads, self.head_dim, self.state_size
        return (H * P, Hkv * P, Hkv * N, H * N, H)

    @property
    def conv_width(self) -> int:  # channels of the depthwise conv: x, B and C
        return sum(self.in_proj_widths[1:4])


@dataclass
class Mamba2State:
    """Decoding state of one Mamba2 layer, plus snapshots for speculative rollback.

    Unlike a KV cache, an SSM state cannot forget tokens in place, so rolling back needs a copy
    of the state at the target position. With `max_rollback` > 0 the layer keeps one snapshot per
    position for the last `max_rollback` positions (decode steps and short multi-token calls run
    token by token so that every position gets one); 0 keeps none (plain generation).

    The snapshots live in preallocated rings (position p in slot p % (max_rollback + 1)), so the
    compiled decode step can write them inside its graph; `snapshots` is the host-side record
    of which positions the rings hold.
    """

    conv: torch.Tensor  # (B, conv_width, conv_kernel - 1): the last pre-conv inputs
    ssm: torch.Tensor  # (B, H, P, N) in fp32 (fp64 for an fp64 model)
    length: int = 0  # tokens this state has consumed
    max_rollback: int = 0
    conv_ring: torch.Tensor | None = None  # (max_rollback + 1, *conv.shape)
    ssm_ring: torch.Tensor | None = None  # (max_rollback + 1, *ssm.shape)
    snapshots: set[int] = field(default_factory=set)  # positions the rings hold

    @classmethod
    def allocate(cls, conv: torch.Tensor, ssm: torch.Tensor, max_rollback: int) -> Mamba2State:
        rings = ((conv.new_zeros(max_rollback + 1, *conv.shape),
                  ssm.new_zeros(max_rollback + 1, *ssm.shape)) if max_rollback > 0
                 else (None, None))
        return cls(conv, ssm, max_rollback=max_rollback, conv_ring=rings[0], ssm_ring=rings[1])

    @property
    def ring_size(self) -> int:
        return self.max_rollback + 1

    def ring_slots(self, n: int) -> torch.Tensor:
        return ring_slots(self.length, n, self.ring_size, self.conv.device)

    def check_start(self, start: int) -> None:
        """A call that feeds tokens from slot `start` on must find the state exactly there."""
        if self.length != start:
            raise ValueError(f"Mamba2 state holds {self.length} tokens but the call starts at "
                             f"{start} (a skipped layer must be rolled back before it runs)")

    @property
    def rings(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.conv_ring, self.ssm_ring) if self.max_rollback > 0 else None

    def snapshot(self) -> None:
        """Snapshot the state at its current length (before a chunked scan moves it on)."""
        if self.max_rollback > 0:
            save_snapshot(self.conv, self.ssm, self.rings, self.ring_slots(0))
            self._mark(self.length, self.length)

    def advance(self, n: int, snapshotted: bool) -> None:
        """The one writer of `length`: n tokens consumed; `snapshotted`: the rings were written
        at every position on the way (`scan_tokens`), inside a compiled graph or not."""
        first = self.length
        self.length += n
        if snapshotted and self.max_rollback > 0:
            self._mark(first, self.length)

    def _mark(self, first: int, last: int) -> None:
        """Record that the rings hold positions first..last; forget those too old to keep."""
        self.snapshots.update(range(first, last + 1))
        self.snapshots.difference_update([p for p in self.snapshots
                                          if p < last - self.max_rollback])

    def rollback(self, length: int) -> None:
        if length >= self.length:
            return  # a layer the draft skipped has not moved past `length`
        if length not in self.snapshots:
            raise ValueError(
                f"Mamba2 state cannot roll back from {self.length} to {length}: no snapshot "
                f"(allocate the cache with max_rollback >= {self.length - length})")
        slot = length % self.ring_size
        self.conv.copy_(self.conv_ring[slot])
        self.ssm.copy_(self.ssm_ring[slot])
        self.length = length
        self.snapshots.difference_update([p for p in self.snapshots if p > length])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv, self.ssm))

    def select_rows(self, rows: torch.Tensor) -> Mamba2State:
        """Row i of the result is row rows[i]; it starts without roll-back snapshots."""
        return Mamba2State(self.conv[rows], self.ssm[rows], length=self.length)

    def copy_rows_from(self, src: Mamba2State) -> None:
        for mine, theirs in ((self.conv, src.conv), (self.ssm, src.ssm),
                             *zip(self.rings or (), src.rings or (), strict=True)):
            mine.copy_(theirs.expand_as(mine))
        self.length, self.snapshots = src.length, set(src.snapshots)


def ring_slots(start: int, n: int, ring_size: int, device) -> torch.Tensor:
    """Ring slots (n + 1,) of positions start .. start + n: the snapshots taken before each of
    n tokens and after the last (what `Mamba2.scan_tokens` writes)."""
    return (start + torch.arange(n + 1, device=device)) % ring_size


def save_snapshot(conv: torch.Tensor, ssm: torch.Tensor,
                  rings: tuple[torch.Tensor, torch.Tensor], slot: torch.Tensor) -> None:
    """Copy the state into ring slot `slot` (a (1,) tensor: the compiled step writes it inside
    its graph, so the slot is data, not a Python int)."""
    rings[0].index_copy_(0, slot, conv[None])
    rings[1].index_copy_(0, slot, ssm[None])


# -- the mixer ------------------------------------------------------------------------------

class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) per group of `group_size` channels (Mamba2, norm_before_gate=False)."""

    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        acc = scan_dtype(dtype)
        h = y.to(acc) * F.silu(z.to(acc))
        h = h.unflatten(-1, (-1, self.group_size))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.flatten(-2).to(dtype)


class Mamba2(nn.Module):
    kind = "mamba2"

    def __init__(self, sizes: Mamba2Sizes):
        super().__init__()
        self.sizes = s = sizes
        self.in_proj = Linear(s.hidden_size, sum(s.in_proj_widths), bias=s.in_proj_bias)
        # Depthwise causal conv over [x | B | C]; weight (channels, 1, kernel) as in nn.Conv1d.
        self.conv_weight = nn.Parameter(torch.empty(s.conv_width, 1, s.conv_kernel))
        self.conv_bias = nn.Parameter(torch.empty(s.conv_width))
        self.dt_bias = nn.Parameter(torch.empty(s.n_heads))
        self.A_log = nn.Parameter(torch.empty(s.n_heads))
        self.D = nn.Parameter(torch.empty(s.n_heads))
        # One norm group per head: C has one group per head, so each head is normalised alone.
        self.norm = GatedRMSNorm(s.inner, s.head_dim, s.norm_eps)
        self.out_proj = Linear(s.inner, s.hidden_size, bias=s.out_proj_bias)

    def split_in_proj(self, t: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, ...]:
        """z, x, B, C, dt parts of in_proj's output (dim=-1) or weight/bias (dim=0)."""
        return t.split(self.sizes.in_proj_widths, dim=dim)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The standard Mamba2 initialisation, drawn from `generator` (deterministic per seed)."""
        s = self.sizes

        def uniform(t: torch.Tensor, bound: float) -> None:
            t.copy_((torch.rand(t.shape, generator=generator) * 2 - 1) * bound)

        for lin in (self.in_proj, self.out_proj):  # nn.Linear's default bounds
            bound = 1 / math.sqrt(lin.in_features)
            uniform(lin.weight, bound)
            if lin.bias is not None:
                uniform(lin.bias, bound)
        bound = 1 / math.sqrt(s.conv_kernel)  # nn.Conv1d's default for a depthwise conv
        uniform(self.conv_weight, bound)
        uniform(self.conv_bias, bound)
        u = torch.rand(s.n_heads, generator=generator)
        dt = torch.exp(u * (math.log(s.dt_max) - math.log(s.dt_min)) + math.log(s.dt_min))
        dt = dt.clamp(min=s.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        lo, hi = s.a_init_range
        self.A_log.copy_(torch.log(lo + torch.rand(s.n_heads, generator=generator) * (hi - lo)))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def allocate_state(self, batch: int, max_len: int, dtype, device,
                       max_rollback: int = 0) -> Mamba2State:
        del max_len  # the state does not grow with the context
        s = self.sizes
        return Mamba2State.allocate(
            torch.zeros(batch, s.conv_width, s.conv_kernel - 1, dtype=dtype, device=device),
            torch.zeros(batch, s.n_heads, s.head_dim, s.state_size, dtype=scan_dtype(dtype),
                        device=device),
            max_rollback)

    def _heads(self, xBC: torch.Tensor):
        """Post-conv (b, T, conv_width) -> x, B (repeated to all heads), C: (b, T, H, P|N)."""
        s = self.sizes
        x, B, C = xBC.split(self.sizes.in_proj_widths[1:4], dim=-1)
        rep = s.n_heads // s.n_kv_heads
        x = x.unflatten(-1, (s.n_kv_heads, s.head_dim)).repeat_interleave(rep, dim=2)
        B = B.unflatten(-1, (s.n_kv_heads, s.state_size)).repeat_interleave(rep, dim=2)
        C = C.unflatten(-1, (s.n_heads, s.state_size))
        return x, B, C

    def _conv(self, xBC: torch.Tensor, state: Mamba2State | None) -> torch.Tensor:
        """Causal depthwise conv of (b, T, ch) over whole blocks; updates the state's conv
        window (one token at a time goes through `conv_step`)."""
        seq = xBC.transpose(1, 2)  # (b, ch, T)
        k = self.sizes.conv_kernel
        prev = (state.conv if state is not None
                else seq.new_zeros(seq.shape[0], seq.shape[1], k - 1))
        full = torch.cat([prev.to(seq.dtype), seq], dim=-1)  # (b, ch, k - 1 + T)
        if state is not None and k > 1:
            state.conv.copy_(full[..., -(k - 1):])
        weight, bias = self.conv_weight.to(seq.dtype), self.conv_bias.to(seq.dtype)
        out = F.conv1d(full, weight, bias, groups=seq.shape[1])
        return out.transpose(1, 2)  # (b, T, ch)

    def conv_step(self, xBC: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """The conv for one token (b, 1, ch), sliding `window` (b, ch, k - 1) in place: one dot
        product per channel (conv1d's setup costs ~0.2 ms per call here, more than the
        arithmetic); compared with conv1d by test_mixer_full_scan_equals_prefill_then_steps
        (tests/test_mamba2.py). Shared by the eager and the compiled step."""
        seq = xBC.transpose(1, 2)  # (b, ch, 1)
        full = torch.cat([window.to(seq.dtype), seq], dim=-1)  # (b, ch, k)
        if self.sizes.conv_kernel > 1:
            window.copy_(full[..., 1:])
        weight, bias = self.conv_weight.to(seq.dtype), self.conv_bias.to(seq.dtype)
        return ((full * weight[:, 0]).sum(-1) + bias)[:, None, :]

    def project(self, u: torch.Tensor, token_mask: torch.Tensor | None):
        """in_proj and the discretisation: z, xBC (b, T, conv_width), dt (b, T, H), A (H,).
        token_mask (b, T): padding must not reach the conv or state (None: no padding)."""
        z, x_in, B_in, C_in, dt_raw = self.split_in_proj(self.in_proj(u))
        xBC = torch.cat([x_in, B_in, C_in], dim=-1)
        acc = scan_dtype(u.dtype)
        dt = F.softplus(dt_raw.to(acc) + self.dt_bias.to(acc))  # (b, T, H)
        if token_mask is not None:
            mask = token_mask[..., None]
            xBC, dt = xBC * mask, dt * mask
        return z, xBC, dt, -torch.exp(self.A_log.to(acc))

    def readout(self, y: torch.Tensor, z: torch.Tensor, dtype) -> torch.Tensor:
        """Gated norm and out_proj of the scan's y (b, T, H, P)."""
        return self.out_proj(self.norm(y.flatten(-2).to(dtype), z))

    def forward(self, u: torch.Tensor, ctx, state: Mamba2State | None) -> torch.Tensor:
        y, z = self.ssm(u, ctx, state)
        return self.readout(y, z, u.dtype)

    def ssm(self, u: torch.Tensor, ctx, state: Mamba2State | None):
        """The SSM part: y (b, T, H, P) in fp32 (or wider) incl. D * x; the gate z (b, T, H*P).

        ctx: the decoder's ForwardContext (`token_mask`, `start`); state: advanced in place.
        A decode step, and any block short enough to roll back into, runs token by token (a
        snapshot at every position); longer blocks run the chunked scan after one snapshot.
        """
        T = u.shape[1]
        if state is not None:
            state.check_start(ctx.start)
        z, xBC, dt, A = self.project(u, ctx.token_mask)
        if state is not None and (T == 1 or T <= state.max_rollback):
            rings = state.rings
            y = self.scan_tokens(xBC, dt, A, state.conv, state.ssm, rings,
                                 state.ring_slots(T) if rings is not None else None)
            state.advance(T, snapshotted=True)
            return y, z
        if state is not None:
            state.snapshot()
        xh, B, C = self._heads(F.silu(self._conv(xBC, state)))
        y = self._scan(xh, dt, A, B, C, state.ssm if state is not None else None)
        if state is not None:
            state.advance(T, snapshotted=False)
        return y, z

    def _scan(self, x, dt, A, B, C, ssm: torch.Tensor | None) -> torch.Tensor:
        """y (b, T, H, P) incl. D * x over a whole block; `ssm` (the state) is advanced."""
        acc = dt.dtype
        x32, B32, C32 = x.to(acc), B.to(acc), C.to(acc)
        if kernel_available(x.device):
            y, final = kernel_scan(x32, dt, A, B32, C32, self.sizes.chunk_size, ssm)
        else:
            y, final = ssd_chunked(x32, dt, A, B32, C32, self.sizes.chunk_size, ssm)
        if ssm is not None:
            ssm.copy_(final)
        return y + self.D.to(acc)[:, None] * x32

    def token_step(self, xBC: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                   conv: torch.Tensor, ssm: torch.Tensor) -> torch.Tensor:
        """THE one-token step: xBC (b, 1, ch), dt (b, 1, H) -> y (b, 1, H, P) incl. D * x,
        advancing the conv window and the SSM state in place. Compared with the chunked scan by
        test_mixer_full_scan_equals_prefill_then_steps (tests/test_mamba2.py)."""
        xh, B, C = self._heads(F.silu(self.conv_step(xBC, conv)))
        acc = dt.dtype
        x32 = xh.to(acc)
        y = ssd_step_(x32[:, 0], dt[:, 0], A, B[:, 0].to(acc), C[:, 0].to(acc), ssm)[:, None]
        return y + self.D.to(acc)[:, None] * x32

    def scan_tokens(self, xBC, dt, A, conv: torch.Tensor, ssm: torch.Tensor,
                    rings: tuple[torch.Tensor, torch.Tensor] | None,
                    ring_slots: torch.Tensor | None) -> torch.Tensor:
        """T tokens through `token_step`, snapshotting the state into `rings` (None: no
        rollback) at `ring_slots` (T + 1,) before each token and after the last. The eager
        forward and the compiled decode step both run this; buffers only, no bookkeeping (the
        caller advances the state)."""
        ys = []
        for t in range(xBC.shape[1]):
            if rings is not None:
                save_snapshot(conv, ssm, rings, ring_slots[t:t + 1])
            ys.append(self.token_step(xBC[:, t:t + 1], dt[:, t:t + 1], A, conv, ssm))
        if rings is not None:
            save_snapshot(conv, ssm, rings, ring_slots[-1:])
        return torch.cat(ys, dim=1)
