"""Greedy self-speculative decoding (Draft & Verify, arXiv 2309.08168; SWIFT, arXiv 2410.06916).

The draft is the model itself with the attention sub-layers in `skip` bypassed; the verifier is
the full model. Both share one cache: the verifier has written every layer's K/V for all
accepted positions, the draft appends its guesses (for the layers it runs), and after each
verify step the cache is rolled back to the accepted prefix. The output is exactly the
verifier's plain greedy decoding; the stats say how much of it the draft guessed.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import asdict, dataclass

import torch

from rad.model import Decoder


@dataclass
class SpecStats:
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the verifier agreed with
    verify_steps: int = 0  # full-model forwards, prefill included; each emits one token of its own
    emitted: int = 0  # tokens returned
    draft_s: float = 0.0
    verify_s: float = 0.0  # includes the prefill
    total_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def draft_rounds(self) -> int:
        return max(self.verify_steps - 1, 0)  # every verify step after the prefill

    @property
    def mean_accepted_length(self) -> float:
        """Draft tokens accepted per draft round (0 .. gamma); RAD's search objective."""
        return self.accepted / self.draft_rounds if self.draft_rounds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.emitted / self.total_s if self.total_s else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "draft_rounds": self.draft_rounds,
                "acceptance_rate": self.acceptance_rate,
                "mean_accepted_length": self.mean_accepted_length,
                "tokens_per_s": self.tokens_per_s}

    def merge(self, other: SpecStats) -> SpecStats:
        fields = asdict(self)
        return SpecStats(**{k: v + getattr(other, k) for k, v in fields.items()})


@dataclass
class SpecResult:
    tokens: list[int]
    stats: SpecStats


@torch.inference_mode()
def self_speculative_generate(
    model: Decoder,
    input_ids: torch.Tensor,
    skip: Collection[int],
    max_new_tokens: int,
    gamma: int = 4,
    eos_token_ids: Collection[int] = (),
    stop_threshold: float | None = None,
) -> SpecResult:
    """Greedy decode of `input_ids` (1, T) with a skip-draft; returns the verifier's tokens.

    gamma: most tokens drafted per verify step. stop_threshold: Draft & Verify's adaptive stop,
    drafting ends early once the draft's top-1 probability falls below it (None: fixed gamma).
    """
    if input_ids.shape[0] != 1:
        raise ValueError("self-speculative decoding runs at batch 1")
    if gamma < 1 or max_new_tokens < 1:
        raise ValueError("gamma and max_new_tokens must be >= 1")
    skip = frozenset(skip)
    stats = SpecStats()
    t_start = time.perf_counter()
    cache = model.allocate_cache(1, input_ids.shape[1] + max_new_tokens + gamma + 1,
                                 max_rollback=gamma + 1)
    logits = model(input_ids.to(model.device), cache=cache, last_only=True)
    out = [int(logits[0, -1].argmax())]
    stats.verify_steps = 1
    stats.verify_s += time.perf_counter() - t_start
    eos = set(eos_token_ids)
    while len(out) < max_new_tokens and out[-1] not in eos:
        base = cache.length  # slots before `out[-1]`, whose K/V is not cached yet
        # The verifier adds one token of its own: draft no more than fits before the limit.
        budget = min(gamma, max_new_tokens - len(out) - 1)
        t0 = time.perf_counter()
        draft = _draft(model, cache, out[-1], skip, budget, stop_threshold)
        t1 = time.perf_counter()
        cache.rollback(base)
        verified, n_ok = _verify(model, cache, out[-1], draft)
        stats.draft_s += t1 - t0
        stats.verify_s += time.perf_counter() - t1
        cache.rollback(base + 1 + n_ok)  # keep `out[-1]` and the accepted drafts
        stats.drafted += len(draft)
        stats.accepted += n_ok
        stats.verify_steps += 1
        out += verified[: n_ok + 1]  # accepted drafts equal the verifier's own tokens
    out = _truncate(out, max_new_tokens, eos)
    stats.emitted = len(out)
    stats.total_s = time.perf_counter() - t_start
    return SpecResult(out, stats)


def _draft(model: Decoder, cache, last: int, skip: frozenset, budget: int,
           stop_threshold: float | None) -> list[int]:
    draft: list[int] = []
    token = last
    for _ in range(budget):
        logits = model(torch.tensor([[token]], device=model.device), cache=cache, skip=skip)
        probs = logits[0, -1].float().softmax(-1)
        p, token = (float(v) for v in probs.max(-1))
        token = int(token)
        if stop_threshold is not None and draft and p < stop_threshold:
            break  # not confident: leave this one to the verifier
        draft.append(token)
    return draft


def _verify(model: Decoder, cache, last: int, draft: list[int]) -> tuple[list[int], int]:
    """One verifier forward over [last, *draft]: its greedy tokens (len(draft) + 1) and how
    many drafted tokens it agrees with, in order."""
    block = torch.tensor([[last, *draft]], device=model.device)
    verified = model(block, cache=cache)[0].argmax(-1).tolist()
    n_ok = 0
    while n_ok < len(draft) and draft[n_ok] == verified[n_ok]:
        n_ok += 1
    return verified, n_ok


def _truncate(tokens: list[int], limit: int, eos: set[int]) -> list[int]:
    tokens = tokens[:limit]
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


@torch.inference_mode()
def speculative_generate(
    target: Decoder,
    draft: Decoder,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    gamma: int = 4,
    eos_token_ids: Collection[int] = (),
) -> SpecResult:
    """Greedy speculative decoding with a separate draft model (e.g. a hybrid drafting for its
    teacher); returns exactly the target's greedy tokens. Both models must share a tokenizer.

    Each model keeps its own cache. Before drafting, the draft catches up on every token it has
    not seen (the target's bonus token, and the last draft token when all were accepted); after
    verification both caches are rolled back to the accepted prefix.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("speculative decoding runs at batch 1")
    if gamma < 1 or max_new_tokens < 1:
        raise ValueError("gamma and max_new_tokens must be >= 1")
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise ValueError(f"draft vocabulary {draft.cfg.vocab_size} != target's "
                         f"{target.cfg.vocab_size}")
    stats = SpecStats()
    t_start = time.perf_counter()
    prompt = input_ids[0].tolist()
    max_len = len(prompt) + max_new_tokens + gamma + 1
    # Mamba2 layers (hybrid draft or target) keep per-position snapshots to roll back; a round
    # moves either cache forward by at most gamma + 2 tokens (catch-up + drafts).
    t_cache = target.allocate_cache(1, max_len, max_rollback=gamma + 2)
    d_cache = draft.allocate_cache(1, max_len, max_rollback=gamma + 2)
    logits = target(input_ids.to(target.device), cache=t_cache, last_only=True)
    out = [int(logits[0, -1].argmax())]
    stats.verify_steps = 1
    stats.verify_s += time.perf_counter() - t_start
    eos = set(eos_token_ids)
    while len(out) < max_new_tokens and out[-1] not in eos:
        base = t_cache.length  # the target has cached prompt + out[:-1]
        budget = min(gamma, max_new_tokens - len(out) - 1)
        t0 = time.perf_counter()
        guesses: list[int] = []
        if budget:
            seq = prompt + out
            pending = torch.tensor([seq[d_cache.length:]], device=draft.device)  # ends at out[-1]
            for _ in range(budget):
                lg = draft(pending, cache=d_cache, last_only=True)
                guesses.append(int(lg[0, -1].argmax()))
                pending = torch.tensor([[guesses[-1]]], device=draft.device)
        t1 = time.perf_counter()
        verified, n_ok = _verify(target, t_cache, out[-1], guesses)
        stats.draft_s += t1 - t0
        stats.verify_s += time.perf_counter() - t1
        keep = base + 1 + n_ok  # `out[-1]` and the accepted guesses
        t_cache.rollback(keep)
        d_cache.rollback(min(d_cache.length, keep))
        stats.drafted += len(guesses)
        stats.accepted += n_ok
        stats.verify_steps += 1
        out += verified[: n_ok + 1]
    out = _truncate(out, max_new_tokens, eos)
    stats.emitted = len(out)
    stats.total_s = time.perf_counter() - t_start
    return SpecResult(out, stats)
