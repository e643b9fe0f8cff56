"""RAD's search objective without a generation loop: self-speculative acceptance, teacher-forced.

Greedy self-speculative decoding emits exactly the verifier's greedy tokens y_0, y_1, ... of each
prompt, whatever the draft does. So the verifier's side of every round is known in advance: one
greedy continuation per prompt and one forward over it give every token and every layer's K/V
(`trace_verifier`, once per model and prompt set). A round that starts at continuation index i
(the verifier has cached the prompt and y_0..y_{i-1}; y_i is the last emitted token) is then
fully determined by the skip set:

- draft step j (j = 0 .. budget-1) feeds y_{i+j} at position T+i+j and guesses y_{i+j+1};
- its attention reads, as the real skip-draft does on the shared cache, the *verifier's* K/V for
  positions < T+i and the *draft's own* K/V for T+i .. T+i+j (written by this round's steps);
- the round accepts the longest prefix of guesses equal to the verifier's tokens, and the next
  round starts at i + accepted + 1; the budget is min(gamma, max_new_tokens - i - 2), and the
  loop ends at max_new_tokens or once y_i is an EOS token, exactly as `speculative_generate`.

`simulate_skip_set` runs draft step j for every possible round start i of every prompt in one
batched forward (step j only where steps 0..j-1 all matched), then walks the chain of rounds.
Cost: one batched forward per draft step over ~N*(1 + acceptance) tokens, compute-bound, instead
of ~N/(1 + accepted) rounds of gamma + 1 bandwidth-bound single-token forwards, and no timing.
The result is the real run's `SpecStats` (drafted, accepted, verify steps; no times): equal up to
float rounding in the attention sums (the tests check exact equality in float64).

Supported: all-attention verifiers, fixed gamma (no adaptive stop threshold: after a miss the
real draft keeps drafting its own guesses, which only the real loop can count).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from rad.runtime.decode import SpecStats, cut_at_eos, draft_budget, generate
from rad.runtime.linear import fast_layout_is_in_major, set_weight_layout
from rad.runtime.model import Decoder


@dataclass
class PromptTrace:
    prompt_len: int  # T
    tokens: list[int]  # the verifier's greedy continuation y_0 .. y_{M-1}, not cut at EOS
    keys: torch.Tensor  # (n_layers, n_kv_heads, T + M, head_dim): the verifier's K (RoPE'd)
    values: torch.Tensor  # same shape: the verifier's V


@dataclass
class VerifierTrace:
    prompts: list[PromptTrace]
    max_new_tokens: int
    eos_token_ids: frozenset[int]

    def nbytes(self) -> int:
        return sum(p.keys.nbytes + p.values.nbytes for p in self.prompts)


def _check_model(model: Decoder) -> None:
    kinds = set(model.layer_kinds)
    if kinds != {"attention"}:
        raise ValueError("the teacher-forced objective simulates an all-attention verifier; "
                         f"this model has {sorted(kinds)} layers (use a decoding objective)")


@torch.inference_mode()
def trace_verifier(model: Decoder, prompts: Sequence[torch.Tensor], max_new_tokens: int,
                   eos_token_ids: Collection[int] = ()) -> VerifierTrace:
    """Each prompt (1, T): the verifier's greedy continuation (max_new_tokens tokens, decoding on
    past an EOS, since a round may accept past one) and the K/V of prompt + continuation as one
    teacher-forced forward computes them (the verify forwards' view of the prefix)."""
    _check_model(model)
    traces = []
    for ids in prompts:
        ids = ids.to(model.device)
        T = ids.shape[1]
        # No EOS given to `generate`: the continuation runs on past one.
        tokens = generate(model, ids, max_new_tokens=max_new_tokens).tokens[0]
        full = torch.cat([ids, torch.tensor([tokens], device=model.device)], 1)
        cache = model.allocate_cache(1, full.shape[1])
        logits = model(full, cache=cache)
        # The verifier's tokens are what its (block) forwards argmax to; equal to the decoded
        # continuation up to float ties, and these are the ones acceptance is compared with.
        tokens = logits[0, T - 1:-1].argmax(-1).tolist()
        keys = torch.stack([s.k[0] for s in cache.states])
        values = torch.stack([s.v[0] for s in cache.states])
        traces.append(PromptTrace(T, tokens, keys, values))
    return VerifierTrace(traces, max_new_tokens, frozenset(eos_token_ids))


def _budget(i: int, max_new_tokens: int, gamma: int) -> int:
    """Draft tokens in the round that starts with y_i emitted (i + 1 tokens out)."""
    return draft_budget(i + 1, max_new_tokens, gamma)


@torch.inference_mode()
def accepted_per_round_start(model: Decoder, trace: VerifierTrace, skip: Collection[int],
                             gamma: int) -> list[list[int]]:
    """For every prompt and every round start i (0 .. M-2): the tokens a round starting there
    accepts. One batched forward per draft step; step j runs only where steps < j matched."""
    _check_model(model)
    if gamma < 1:
        raise ValueError("gamma must be >= 1")
    skip = frozenset(skip)
    bad = [i for i in skip if not 0 <= i < model.cfg.n_layers]
    if bad:
        raise ValueError(f"skip layers {bad} out of range 0..{model.cfg.n_layers - 1}")
    M = trace.max_new_tokens
    device = model.device
    starts = [torch.arange(max(len(p.tokens) - 1, 0), device=device) for p in trace.prompts]
    budgets = [torch.tensor([_budget(int(i), M, gamma) for i in s], dtype=torch.long,
                            device=device) for s in starts]
    accepted = [torch.zeros_like(b) for b in budgets]
    active = [b > 0 for b in budgets]  # rounds whose step j is still to be run
    # The draft's own K/V of each round, per attended layer and step: (starts, Hkv, gamma, D).
    own_k = [{} for _ in trace.prompts]
    own_v = [{} for _ in trace.prompts]
    batch = sum(len(s) for s in starts)
    in_major = fast_layout_is_in_major(model.dtype, device, batch)
    if in_major == model.lm_head.weight.is_contiguous():
        set_weight_layout(model, in_major)
    for j in range(gamma):
        rows = [a.nonzero().flatten() for a in active]  # round starts stepping now, per prompt
        if sum(len(r) for r in rows) == 0:
            break
        tokens = torch.cat([torch.tensor(p.tokens, device=device)[r + j]
                            for p, r in zip(trace.prompts, rows, strict=True)])
        positions = torch.cat([p.prompt_len + r + j
                               for p, r in zip(trace.prompts, rows, strict=True)])
        logits = _draft_step(model, trace, skip, tokens, positions, rows, j, gamma, own_k,
                             own_v)
        guesses = logits.argmax(-1)
        offset = 0
        for p_idx, (p, r) in enumerate(zip(trace.prompts, rows, strict=True)):
            if not len(r):
                continue
            target = torch.tensor(p.tokens, device=device)[r + j + 1]
            ok = guesses[offset:offset + len(r)] == target
            offset += len(r)
            accepted[p_idx][r[ok]] += 1
            still = torch.zeros_like(active[p_idx])
            still[r[ok]] = True
            active[p_idx] = still & (budgets[p_idx] > j + 1)
    return [a.tolist() for a in accepted]


def _draft_step(model: Decoder, trace: VerifierTrace, skip: frozenset[int],
                tokens: torch.Tensor, positions: torch.Tensor, rows: list[torch.Tensor], j: int,
                gamma: int, own_k: list[dict], own_v: list[dict]) -> torch.Tensor:
    """Draft step j for the given round starts: the model's own layer loop with `skip`
    attention bypassed, each query (one row of length 1) reading the verifier's K/V before its
    round and its round's own K/V. Logits (Q, V)."""
    h = model.embed(tokens)[:, None]  # (Q, 1, hidden)
    cos, sin = model.rope(positions[:, None], h.dtype)  # (Q, 1, 1, D)

    def mixer_call(layer: int):
        if layer in skip:
            return None
        return lambda attn, x: _prefix_and_own_attention(
            attn, x, cos, sin, layer, trace, rows, j, gamma, own_k, own_v)

    return model.head(model.run_layers(h, mixer_call))[:, 0]


def _prefix_and_own_attention(attn, x, cos, sin, layer: int, trace: VerifierTrace,
                              rows: list[torch.Tensor], j: int, gamma: int, own_k: list[dict],
                              own_v: list[dict]) -> torch.Tensor:
    """Attention of Q one-token queries over two key sets at once: the prompt's shared verifier
    K/V before each query's round (one copy for all its rounds, not one per row) and the round's
    own draft K/V. Compared with real self-speculative decoding (SDPA over the shared cache) by
    tests/test_acceptance.py::test_simulation_equals_real_decoding, exactly in float64."""
    q, k, v = attn.project(x, cos, sin)  # (Q, H, 1, D), (Q, Hkv, 1, D) x 2
    Q, H, _, D = q.shape
    Hkv = attn.n_kv_heads
    q, k, v = q.reshape(Q, Hkv, H // Hkv, D), k[:, :, 0], v[:, :, 0]
    scale = D ** -0.5
    outs = []
    offset = 0
    for p_idx, (p, r) in enumerate(zip(trace.prompts, rows, strict=True)):
        n = len(r)
        if not n:
            continue
        qb, kb, vb = q[offset:offset + n], k[offset:offset + n], v[offset:offset + n]
        offset += n
        store_k = own_k[p_idx].setdefault(layer, torch.zeros(
            (max(len(p.tokens) - 1, 0), Hkv, gamma, D), dtype=x.dtype, device=x.device))
        store_v = own_v[p_idx].setdefault(layer, torch.zeros_like(store_k))
        store_k[r, :, j] = kb
        store_v[r, :, j] = vb
        ver_k, ver_v = p.keys[layer], p.values[layer]  # (Hkv, P, D)
        s_ver = torch.einsum("nhgd,hpd->nhgp", qb, ver_k) * scale
        before = (torch.arange(ver_k.shape[1], device=x.device)[None, :]
                  < (p.prompt_len + r)[:, None])  # (n, P): the round's prefix
        s_ver = s_ver.masked_fill(~before[:, None, None, :], float("-inf"))
        s_own = torch.einsum("nhgd,nhjd->nhgj", qb, store_k[r, :, :j + 1]) * scale
        w = torch.softmax(torch.cat([s_ver, s_own], -1), -1)
        P = ver_k.shape[1]
        o = (torch.einsum("nhgp,hpd->nhgd", w[..., :P], ver_v)
             + torch.einsum("nhgj,nhjd->nhgd", w[..., P:], store_v[r, :, :j + 1]))
        outs.append(o.reshape(n, H * D))
    return attn.o_proj(torch.cat(outs))[:, None]  # (Q, 1, hidden)


def chain(accepted: Sequence[int], tokens: Sequence[int], max_new_tokens: int, gamma: int,
          eos: Collection[int]) -> SpecStats:
    """Walk the rounds a real run takes through per-start acceptances: SpecStats without times."""
    stats = SpecStats(verify_steps=1)  # the prefill
    i = 0
    while i + 1 < max_new_tokens and tokens[i] not in eos:
        budget = _budget(i, max_new_tokens, gamma)
        a = accepted[i]
        stats.drafted += budget
        stats.accepted += a
        stats.verify_steps += 1
        i += a + 1
    stats.emitted = len(cut_at_eos(tokens, eos, max_new_tokens))
    return stats


def simulate_skip_set(model: Decoder, trace: VerifierTrace, skip: Collection[int],
                      gamma: int) -> SpecStats:
    """The summed SpecStats a real `speculative_generate` over the traced prompts would report
    for `skip` (times zero)."""
    per_start = accepted_per_round_start(model, trace, skip, gamma)
    total = SpecStats()
    for p, acc in zip(trace.prompts, per_start, strict=True):
        total = total.merge(chain(acc, p.tokens, trace.max_new_tokens, gamma,
                                  trace.eos_token_ids))
    return total
