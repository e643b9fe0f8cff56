"""The one decode core (gpt-fast's shape): `prefill`, `decode_step`, a sampler,
and the two loops built from them, `generate` and `speculative_generate`. Every caller (the CLI,
the lm-eval backend, RAD's diagnosis and search, fidelity, the benches) decodes through here, so
a speed-up or a fix lands everywhere.

- `generate`: batched prefill with left padding, then one-token steps into a preallocated cache;
  greedy by default, or any `sampler` (e.g. `make_sampler`'s seeded temperature + top-p).
- `speculative_generate`: greedy speculative decoding (Draft & Verify, arXiv 2309.08168; SWIFT,
  arXiv 2410.06916) with either a *skip-draft* (the model itself with the attention sub-layers
  in `skip` bypassed, sharing the verifier's cache) or a separate `draft` model (its own cache).
  The output is exactly the verifier's plain greedy decoding; the stats say how much of it the
  draft guessed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from rad.runtime.cache import InferenceCache
from rad.runtime.model import Decoder
from rad.runtime.static_step import Stepper

Sampler = Callable[[torch.Tensor], torch.Tensor]  # next-token logits (B, V) -> token ids (B,)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids, attention_mask), both (B, T_max), padding on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


# -- the primitives ----------------------------------------------------------------------------

def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The default sampler: argmax (B, V) -> (B,)."""
    return logits.argmax(-1)


def make_sampler(temperature: float, top_p: float, seed: int) -> Sampler:
    """Seeded temperature + nucleus (top-p) sampling."""
    gen = torch.Generator().manual_seed(seed)

    def sample(logits: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
        probs = torch.softmax(logits.float() / temperature, -1)
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set reaching top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=gen)
        return order.gather(-1, choice).squeeze(-1).to(logits.device)

    return sample


def prefill(model: Decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            cache: InferenceCache, skip: Collection[int] = ()) -> torch.Tensor:
    """Run the prompt (B, T) into `cache`; the last position's logits (B, V)."""
    return model(input_ids, attention_mask, cache=cache, skip=skip, last_only=True)[:, -1]


def decode_step(model: Decoder, tokens: torch.Tensor, cache: InferenceCache,
                skip: Collection[int] = ()) -> torch.Tensor:
    """One new token per row (B,) appended to `cache`; its logits (B, V). Compiled or eager as
    the switch says (`rad.runtime.compile_mode`); a loop should hold one `Stepper` instead."""
    return Stepper(model, cache, skip)(tokens[:, None])[:, -1]


def decode_steps(model: Decoder, tokens: torch.Tensor, cache: InferenceCache,
                 n: int) -> torch.Tensor:
    """`n` greedy steps from `tokens` (B,), no stopping (the benches time exactly n steps);
    returns the last tokens (B,)."""
    step = Stepper(model, cache)
    for _ in range(n):
        tokens = greedy(step(tokens[:, None])[:, -1])
    return tokens


def cache_length(model: Decoder, need: int, bucket: int = 128) -> int:
    """Cache slots for `need` tokens, rounded up to `bucket` so that the compiled step (whose
    shape includes the cache length) is reused across prompts of different lengths."""
    rounded = -(-need // bucket) * bucket
    window = model.cfg.sliding_window
    return need if window is not None and rounded > window else rounded


# -- generate ----------------------------------------------------------------------------------

@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per row, cut after the first EOS (EOS included) or
    # after the token at which `stop` ended the row
    prompt_len: int  # padded prompt length
    cache_bytes: int  # bytes of inference state allocated


@torch.inference_mode()
def generate(
    model: Decoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 128,
    eos_token_ids: Collection[int] = (),
    skip: Collection[int] = (),
    stop_at_eos: bool = True,
    progress: bool = False,
    stop: Callable[[int, list[int]], bool] | None = None,
    sampler: Sampler | None = None,
) -> Generation:
    """Decode `max_new_tokens` (fewer if every row hit EOS and `stop_at_eos`).

    stop(row, new_tokens): called after each step for every unfinished row; True ends the row
    there (e.g. a stop string appeared in its text). Ended rows stay in the batch until all end.
    sampler: next-token choice from logits (B, V); default `greedy`.
    """
    pick = sampler or greedy
    B, T = input_ids.shape
    device = model.device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    cache = model.allocate_cache(B, cache_length(model, T + max_new_tokens))
    logits = prefill(model, input_ids, attention_mask, cache, skip)
    stepper = Stepper(model, cache, skip)
    eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    ends = [0] * B  # new-token count at which `stop` ended a row (0: not ended by `stop`)
    rows: list[list[int]] = [[] for _ in range(B)]  # new tokens so far, for `stop`
    out = []
    bar = tqdm(total=max_new_tokens, desc="generate", unit="tok", disable=not progress,
               leave=False)
    for step in range(max_new_tokens):
        bar.update()
        nxt = pick(logits)  # (B,)
        out.append(nxt)
        done |= torch.isin(nxt, eos)
        if stop is not None:
            for row, t in zip(rows, nxt.tolist(), strict=True):
                row.append(t)
            for i in (~done).nonzero().flatten().tolist():
                if stop(i, rows[i]):
                    done[i] = True
                    ends[i] = step + 1
        if step + 1 == max_new_tokens or (stop_at_eos and bool(done.all())):
            break
        logits = stepper(nxt[:, None])[:, -1]
    bar.close()
    tokens = [row[:end] if end else row
              for row, end in zip(torch.stack(out, 1).tolist(), ends, strict=True)]
    return Generation([cut_at_eos(row, eos_token_ids) for row in tokens], T,
                      model.state_bytes(B, T + max_new_tokens))


def cut_at_eos(tokens: Sequence[int], eos_ids: Collection[int],
               limit: int | None = None) -> list[int]:
    """The first `limit` tokens (all: None), ended after the first EOS (kept)."""
    tokens = list(tokens[:limit])
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1]
    return tokens


def draft_budget(emitted: int, max_new_tokens: int, gamma: int) -> int:
    """Tokens a speculative round drafts once `emitted` tokens are out: at most gamma, and no
    more than fit before the limit, since the verifier adds one of its own. Real decoding and
    the teacher-forced objective (rad.method.acceptance) both count rounds with it."""
    return max(0, min(gamma, max_new_tokens - emitted - 1))


# -- speculative generate ----------------------------------------------------------------------

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


class _SkipDraft:
    """The verifier itself with `skip` layers' attention bypassed, on the verifier's cache: the
    verifier has written every layer's K/V for all accepted positions, the draft appends its
    guesses (for the layers it runs), and the cache is rolled back before verification."""

    def __init__(self, model: Decoder, cache: InferenceCache, skip: frozenset[int],
                 stop_threshold: float | None):
        self.model, self.stop_threshold = model, stop_threshold
        self.step = Stepper(model, cache, skip)

    def propose(self, cache: InferenceCache, seq: list[int], budget: int) -> list[int]:
        base = cache.length  # slots before seq[-1], whose K/V is not cached yet
        token = torch.tensor([[seq[-1]]], device=self.model.device)
        if self.stop_threshold is None:
            # Tokens stay on the device: one host sync per round, not per draft token.
            drafts = []
            for _ in range(budget):
                token = self.step(token)[:, -1].argmax(-1, keepdim=True)
                drafts.append(token)
            cache.rollback(base)
            return torch.cat(drafts, 1)[0].tolist() if drafts else []
        draft: list[int] = []
        for _ in range(budget):
            probs = self.step(token)[0, -1].float().softmax(-1)
            p, t = (float(v) for v in probs.max(-1))
            if draft and p < self.stop_threshold:
                break  # Draft & Verify's adaptive stop: leave this one to the verifier
            draft.append(int(t))
            token = torch.tensor([[int(t)]], device=self.model.device)
        cache.rollback(base)
        return draft

    def accept(self, keep: int) -> None:
        del keep  # the shared cache is rolled back by the loop


class _ModelDraft:
    """A separate draft model (e.g. a hybrid drafting for its teacher) with its own cache. Before
    drafting it catches up on every token it has not seen (the verifier's bonus token, and the
    last draft token when all were accepted); after verification its cache is rolled back."""

    def __init__(self, draft: Decoder, max_len: int, gamma: int):
        self.model = draft
        # Mamba2 layers keep per-position snapshots to roll back; a round moves the draft's
        # cache forward by at most gamma + 2 tokens (catch-up + drafts).
        self.cache = draft.allocate_cache(1, max_len, max_rollback=gamma + 2)
        self.step = Stepper(draft, self.cache)

    def propose(self, cache: InferenceCache, seq: list[int], budget: int) -> list[int]:
        del cache  # the verifier's
        guesses: list[int] = []
        if budget:
            device = self.model.device
            pending = torch.tensor([seq[self.cache.length:]], device=device)  # ends at seq[-1]
            for _ in range(budget):
                pending = self.step(pending, last_only=True)[:, -1].argmax(-1, keepdim=True)
                guesses.append(pending)
            guesses = torch.cat(guesses, 1)[0].tolist()  # one host sync per round
        return guesses

    def accept(self, keep: int) -> None:
        self.cache.rollback(min(self.cache.length, keep))


@torch.inference_mode()
def speculative_generate(
    model: Decoder,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    gamma: int = 4,
    eos_token_ids: Collection[int] = (),
    skip: Collection[int] = (),
    draft: Decoder | None = None,
    stop_threshold: float | None = None,
) -> SpecResult:
    """Greedy decode of `input_ids` (1, T) by `model` (the verifier), drafted either by `model`
    with the `skip` layers' attention bypassed (self-speculative; empty skip: the full model) or
    by a separate `draft` model with the same tokenizer. Returns exactly the verifier's tokens.

    gamma: most tokens drafted per verify step. stop_threshold (skip-draft only): Draft &
    Verify's adaptive stop, drafting ends once the draft's top-1 probability falls below it.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("speculative decoding runs at batch 1")
    if gamma < 1 or max_new_tokens < 1:
        raise ValueError("gamma and max_new_tokens must be >= 1")
    if draft is not None and (skip or stop_threshold is not None):
        raise ValueError("skip and stop_threshold apply to the self-speculative draft, not to "
                         "a separate draft model")
    if draft is not None and draft.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"draft vocabulary {draft.cfg.vocab_size} != target's "
                         f"{model.cfg.vocab_size}")
    stats = SpecStats()
    t_start = time.perf_counter()
    prompt = input_ids[0].tolist()
    max_len = len(prompt) + max_new_tokens + gamma + 1
    # One round drafts gamma tokens past `out[-1]` on the shared cache (skip-draft); the
    # verifier's own block is gamma + 1 long.
    max_rollback = gamma + 1 if draft is None else gamma + 2
    cache = model.allocate_cache(1, cache_length(model, max_len), max_rollback=max_rollback)
    verify = Stepper(model, cache)
    if draft is None:
        drafter: _SkipDraft | _ModelDraft = _SkipDraft(model, cache, frozenset(skip),
                                                       stop_threshold)
    else:
        drafter = _ModelDraft(draft, cache_length(draft, max_len), gamma)
    logits = model(input_ids.to(model.device), cache=cache, last_only=True)
    out = [int(logits[0, -1].argmax())]
    stats.verify_steps = 1
    stats.verify_s += time.perf_counter() - t_start
    eos = set(eos_token_ids)
    while len(out) < max_new_tokens and out[-1] not in eos:
        base = cache.length  # the verifier has cached prompt + out[:-1]
        budget = draft_budget(len(out), max_new_tokens, gamma)
        t0 = time.perf_counter()
        guesses = drafter.propose(cache, prompt + out, budget)
        t1 = time.perf_counter()
        verified, n_ok = _verify(verify, out[-1], guesses)
        stats.draft_s += t1 - t0
        stats.verify_s += time.perf_counter() - t1
        keep = base + 1 + n_ok  # `out[-1]` and the accepted guesses
        cache.rollback(keep)
        drafter.accept(keep)
        stats.drafted += len(guesses)
        stats.accepted += n_ok
        stats.verify_steps += 1
        out += verified[: n_ok + 1]  # accepted guesses equal the verifier's own tokens
    out = cut_at_eos(out, eos, max_new_tokens)
    stats.emitted = len(out)
    stats.total_s = time.perf_counter() - t_start
    return SpecResult(out, stats)


def _verify(verify: Stepper, last: int, guesses: list[int]) -> tuple[list[int], int]:
    """One verifier forward over [last, *guesses]: its greedy tokens (len(guesses) + 1) and how
    many guesses it agrees with, in order."""
    block = torch.tensor([[last, *guesses]], device=verify.device)
    verified = verify(block)[0].argmax(-1).tolist()
    n_ok = 0
    while n_ok < len(guesses) and guesses[n_ok] == verified[n_ok]:
        n_ok += 1
    return verified, n_ok
