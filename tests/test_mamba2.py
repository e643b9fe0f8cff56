"""The Mamba2 mixer: its scan paths agree, its limits are known, and it matches transformers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rad.runtime.mamba2 import Mamba2, Mamba2Sizes
from rad.runtime.ssd import ssd_chunked, ssd_sequential, ssd_step, ssd_step_

F64 = torch.float64


def _ctx(token_mask: torch.Tensor, start: int = 0):
    # The mixer reads only these two fields of the decoder's ForwardContext.
    return SimpleNamespace(token_mask=token_mask, start=start)


def _scan_inputs(b, T, H, P, N, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g, dtype=F64)
    dt = torch.rand(b, T, H, generator=g, dtype=F64) * 0.5
    A = -torch.rand(H, generator=g, dtype=F64) * 3
    B = torch.randn(b, T, H, N, generator=g, dtype=F64)
    C = torch.randn(b, T, H, N, generator=g, dtype=F64)
    state = torch.randn(b, H, P, N, generator=g, dtype=F64)
    return x, dt, A, B, C, state


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), T=st.integers(1, 40), H=st.integers(1, 3), P=st.integers(1, 5),
       N=st.integers(1, 5), chunk=st.integers(1, 48), with_state=st.booleans(),
       seed=st.integers(0, 2**16))
def test_chunked_scan_equals_sequential_recurrence(b, T, H, P, N, chunk, with_state, seed):
    x, dt, A, B, C, state = _scan_inputs(b, T, H, P, N, seed)
    init = state if with_state else None
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, init)
    y, s = ssd_chunked(x, dt, A, B, C, chunk, init)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), H=st.integers(1, 3), P=st.integers(1, 5), N=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_in_place_decode_step_equals_the_functional_step(b, H, P, N, seed):
    x, dt, A, B, C, state = _scan_inputs(b, 1, H, P, N, seed)
    ref_state, ref_y = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], state)
    inplace = state.clone()
    y = ssd_step_(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], inplace)
    torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inplace, ref_state, rtol=1e-12, atol=1e-12)


def _mixer(H=4, Hkv=2, P=3, hidden=10, chunk=5, conv=4, seed=0, dtype=F64) -> Mamba2:
    sizes = Mamba2Sizes(hidden_size=hidden, n_heads=H, n_kv_heads=Hkv, head_dim=P, state_size=P,
                        conv_kernel=conv, chunk_size=chunk)
    m = Mamba2(sizes)
    m.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():  # non-trivial norm and D, so every term of the output is exercised
        m.norm.weight.uniform_(0.5, 1.5)
        m.D.uniform_(-1, 1)
    return m.to(dtype)


@settings(max_examples=25, deadline=None)
@given(heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]), P=st.integers(1, 4),
       T=st.integers(1, 24), split=st.integers(0, 24), chunk=st.integers(1, 16),
       b=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_mixer_full_scan_equals_prefill_then_steps(heads, P, T, split, chunk, b, seed):
    """One chunked pass == a chunked prefill of the first tokens, then one-token steps
    (conv window and SSM state carried), == a token-by-token pass with snapshots."""
    H, Hkv = heads
    m = _mixer(H, Hkv, P, chunk=chunk, seed=seed)
    T0 = min(split, T)
    u = torch.randn(b, T, 10, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ones = torch.ones(b, T, dtype=torch.bool)
    full = m(u, _ctx(ones), None)

    state = m.allocate_state(b, T, F64, "cpu")
    parts = [m(u[:, :T0], _ctx(ones[:, :T0]), state)] if T0 else []
    for t in range(T0, T):
        parts.append(m(u[:, t:t + 1], _ctx(ones[:, t:t + 1], t), state))
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-9)

    tokenwise_state = m.allocate_state(b, T, F64, "cpu", max_rollback=T)
    tokenwise = m(u, _ctx(ones), tokenwise_state)
    torch.testing.assert_close(tokenwise, full, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tokenwise_state.ssm, state.ssm, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tokenwise_state.conv, state.conv, rtol=1e-12, atol=1e-12)


def test_rollback_restores_the_state_at_that_position():
    m = _mixer()
    u = torch.randn(1, 9, 10, dtype=F64)
    ones = torch.ones(1, 9, dtype=torch.bool)
    state = m.allocate_state(1, 9, F64, "cpu", max_rollback=6)
    m(u[:, :4], _ctx(ones[:, :4]), state)
    m(u[:, 4:9], _ctx(ones[:, 4:9], 4), state)  # 5 tokens <= max_rollback: one snapshot each
    ref = m.allocate_state(1, 9, F64, "cpu", max_rollback=6)  # the same calls, stopped at 6
    m(u[:, :4], _ctx(ones[:, :4]), ref)
    m(u[:, 4:6], _ctx(ones[:, 4:6], 4), ref)
    state.rollback(6)
    assert state.length == 6
    # (not bitwise: in_proj over 5 rows and over 2 rows may round differently)
    torch.testing.assert_close(state.ssm, ref.ssm, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.conv, ref.conv, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cannot roll back"):
        _advanced(m, u, ones).rollback(1)


def _advanced(m, u, ones):
    state = m.allocate_state(1, 9, F64, "cpu")  # no snapshots kept
    m(u[:, :3], _ctx(ones[:, :3]), state)
    return state


@settings(max_examples=20, deadline=None)
@given(heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]), P=st.integers(1, 4),
       T=st.integers(1, 16), chunk=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_no_decay_no_conv_no_gate_is_causal_linear_attention(heads, P, T, chunk, seed):
    """A = 0, an identity conv (width 1), dt = 1 and D = 0: y_t = sum_{s<=t} (Q_t.K_s) V_s with
    Q = C, K = B, V = x (the SSM output before the gate and norm)."""
    H, Hkv = heads
    m = _mixer(H, Hkv, P, chunk=chunk, conv=1, seed=seed)
    with torch.no_grad():
        m.A_log.fill_(-math.inf)  # A = -exp(-inf) = 0: no decay
        m.conv_weight.fill_(1.0)
        m.conv_bias.zero_()
        m.D.zero_()
        m.split_in_proj(m.in_proj.weight, dim=0)[4].zero_()
        m.dt_bias.fill_(math.log(math.e - 1))  # softplus(.) = 1
    u = torch.randn(2, T, 10, generator=torch.Generator().manual_seed(seed), dtype=F64)
    y, _ = m.ssm(u, _ctx(torch.ones(2, T, dtype=torch.bool)), None)

    _, x, B, C, _ = m.split_in_proj(m.in_proj(u))
    rep = H // Hkv
    V = F.silu(x).unflatten(-1, (Hkv, P)).repeat_interleave(rep, 2).transpose(1, 2)
    K = F.silu(B).unflatten(-1, (Hkv, P)).repeat_interleave(rep, 2).transpose(1, 2)
    Q = F.silu(C).unflatten(-1, (H, P)).transpose(1, 2)  # (b, H, T, P)
    scores = (Q @ K.transpose(-1, -2)).tril()  # causal, unnormalised
    expected = (scores @ V).transpose(1, 2)  # (b, T, H, P)
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-9)


def test_padding_never_reaches_the_state():
    """Left-padded rows give the same outputs and final state as the unpadded rows."""
    m = _mixer(chunk=3)
    u = torch.randn(1, 7, 10, dtype=F64)
    junk = torch.randn(1, 4, 10, dtype=F64) * 100  # whatever padding holds must not matter
    padded = torch.cat([junk, u], 1)
    mask = torch.tensor([[False] * 4 + [True] * 7])
    s_pad, s_ref = (m.allocate_state(1, 11, F64, "cpu") for _ in range(2))
    out_pad = m(padded, _ctx(mask), s_pad)[:, 4:]
    out_ref = m(u, _ctx(torch.ones(1, 7, dtype=torch.bool)), s_ref)
    torch.testing.assert_close(out_pad, out_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s_pad.ssm, s_ref.ssm, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s_pad.conv, s_ref.conv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 4), (32, 8)])
def test_matches_transformers_mamba2_mixer(T, chunk):
    """Same weights in HF's Mamba2Mixer (its torch path) and ours, where both can express the
    configuration: x and B not shared across heads (n_kv_heads = n_heads = n_groups)."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    H, P, hidden = 4, 6, 12
    hf_cfg = Mamba2Config(num_heads=H, head_dim=P, hidden_size=hidden, expand=H * P // hidden,
                          state_size=P, n_groups=H, conv_kernel=4, chunk_size=chunk,
                          use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
                          num_hidden_layers=1)
    hf = Mamba2Mixer(hf_cfg, layer_idx=0).eval()
    ours = Mamba2(Mamba2Sizes(hidden_size=hidden, n_heads=H, n_kv_heads=H, head_dim=P,
                              state_size=P, chunk_size=chunk, norm_eps=1e-5))
    ours.reset_parameters(torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours.norm.weight.uniform_(0.5, 1.5)
        ours.D.uniform_(-1, 1)
        hf.in_proj.weight.copy_(ours.in_proj.weight)
        hf.conv1d.weight.copy_(ours.conv_weight)
        hf.conv1d.bias.copy_(ours.conv_bias)
        for name in ("dt_bias", "A_log", "D"):
            getattr(hf, name).copy_(getattr(ours, name))
        hf.norm.weight.copy_(ours.norm.weight)
        hf.out_proj.weight.copy_(ours.out_proj.weight)
    u = torch.randn(2, T, hidden, generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        expected = hf(u)
        got = ours(u, _ctx(torch.ones(2, T, dtype=torch.bool)), None)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_state_bytes_do_not_grow_with_context():
    m = _mixer()
    assert (m.allocate_state(2, 16, torch.float32, "cpu").nbytes()
            == m.allocate_state(2, 8192, torch.float32, "cpu").nbytes())
