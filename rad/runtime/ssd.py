"""The Mamba2 (SSD) scans: a slow sequential reference, the one-token recurrence used by decoding,
the chunked SSD algorithm for prefill and training, and mamba-ssm's fused Triton kernel where it
imports and the tensors are on CUDA (never required). The tests compare every fast scan with
`ssd_sequential`, the slow reference; `rad.runtime.mamba2` picks one per call.

Shapes: x (b, T, H, P), dt (b, T, H) already discretised (softplus applied, 0 on padding),
A (H,) negative, B and C (b, T, H, N), state (b, H, P, N). All return (y without D, state).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def ssd_sequential(x, dt, A, B, C, state=None):
    """Slow reference: the recurrence one token at a time."""
    b, T, H, P = x.shape
    S = x.new_zeros(b, H, P, B.shape[-1]) if state is None else state.clone()
    ys = []
    for t in range(T):
        S, y = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], S)
        ys.append(y)
    return torch.stack(ys, 1), S


def ssd_step(x, dt, A, B, C, state):
    """One token: x (b, H, P), dt (b, H), B, C (b, H, N), state (b, H, P, N)."""
    decay = torch.exp(dt * A)[..., None, None]  # (b, H, 1, 1)
    state = state * decay + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = (state @ C[..., None]).squeeze(-1)  # (b, H, P)
    return state, y


def ssd_step_(x, dt, A, B, C, state) -> torch.Tensor:
    """`ssd_step` updating `state` in place (decoding): one scaling pass and one batched rank-1
    update instead of building a new state, then y = S C. Returns y (b, H, P)."""
    b, H, P, N = state.shape
    state.mul_(torch.exp(dt * A)[..., None, None])
    flat = state.view(b * H, P, N)
    flat.baddbmm_((dt[..., None] * x).reshape(b * H, P, 1), B.reshape(b * H, 1, N))
    return torch.bmm(flat, C.reshape(b * H, N, 1)).view(b, H, P)


def _decay_matrix(a_cum: torch.Tensor) -> torch.Tensor:
    """(..., l) cumulative log-decays -> (..., l, l) with [i, j] = exp(a_cum[i] - a_cum[j]) for
    j <= i, else 0: the decay from just after position j up to position i."""
    n = a_cum.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=a_cum.device).tril()
    diff = a_cum[..., :, None] - a_cum[..., None, :]
    return diff.masked_fill_(~causal, -torch.inf).exp_()


def ssd_chunked(x, dt, A, B, C, chunk_size: int, state=None):
    """The chunked SSD scan (Mamba2's `ssd_minimal`, as batched matmuls): exact attention-like
    products inside each chunk of `chunk_size` tokens, the recurrence only across chunks."""
    b, T, H, P = x.shape
    pad = -T % chunk_size
    if pad:  # dt = 0 on the padding: no decay and no input, so the final state is exact
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c, l = x.shape[1] // chunk_size, chunk_size  # noqa: E741 (chunks, chunk length)
    # heads first: (b, H, c, l, .) so every product below is one batched matmul
    x, B, C = (t.reshape(b, c, l, H, -1).permute(0, 3, 1, 2, 4) for t in (x, B, C))
    dt = dt.reshape(b, c, l, H).permute(0, 3, 1, 2)  # (b, H, c, l)
    xdt = x * dt[..., None]
    a_cum = torch.cumsum(dt * A[:, None, None], dim=-1)  # (b, H, c, l) log-decay within chunk

    # 1. within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_{j+1..i}) dt_j x_j
    scores = (C @ B.transpose(-1, -2)).mul_(_decay_matrix(a_cum))  # (b, H, c, l, l)
    y = scores @ xdt  # (b, H, c, l, P)

    # 2. each chunk's own contribution to the state at its end: (b, H, c, P, N)
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, H, c, l)
    chunk_states = xdt.transpose(-1, -2) @ (B * decay_to_end[..., None])

    # 3. the recurrence across chunk boundaries (c + 1 states: the initial one first)
    init = x.new_zeros(b, H, 1, P, B.shape[-1]) if state is None else state[:, :, None]
    states = torch.cat([init, chunk_states], dim=2)  # (b, H, c+1, P, N)
    chunk_decay = _decay_matrix(torch.cumsum(F.pad(a_cum[..., -1], (1, 0)), dim=-1))
    states = (chunk_decay @ states.flatten(-2)).unflatten(-1, (P, -1))  # (b, H, c+1, P, N)
    states, final = states[:, :, :-1], states[:, :, -1]

    # 4. the state entering each chunk, read out by C with the decay up to each position
    y += (C @ states.transpose(-1, -2)) * torch.exp(a_cum)[..., None]
    return y.permute(0, 2, 3, 1, 4).reshape(b, c * l, H, P)[:, :T], final


@functools.cache
def _mamba_ssm_chunk_scan():
    """mamba-ssm's fused chunk scan, or None where it does not import (every CPU machine)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # ImportError, or its CUDA extension failing to load
        return None
    return mamba_chunk_scan_combined


def kernel_available(device: torch.device) -> bool:
    return device.type == "cuda" and _mamba_ssm_chunk_scan() is not None


def scan_dtype(dtype: torch.dtype) -> torch.dtype:
    """The scan and its state run in fp32 at least (bf16 decays compound badly over a context)."""
    return torch.promote_types(dtype, torch.float32)


def kernel_scan(x, dt, A, B, C, chunk_size, init):
    scan = _mamba_ssm_chunk_scan()
    y, final = scan(x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(),
                    chunk_size, initial_states=init, return_final_states=True)
    return y, final
