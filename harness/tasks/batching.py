"""Batched generation and teacher-forced scoring on the rad runtime: what the lm-eval adapter
(`lm_backend`) and the tasks that decode on their own (HumanEval, CRUXEval, fidelity) share.

Generation is batched decoding on `rad.runtime.decode.generate` (left padding, one
preallocated cache), with requests sorted by prompt length so a batch wastes little padding, and
a row ends at EOS or when one of its stop strings appears in its text. Scoring is teacher-forced:
the shared part of a batch is prefilled into the cache and only the continuation positions
produce logits, so memory is (batch x continuation x vocab), not (batch x sequence x vocab).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.models import LoadedModel
from rad.runtime.cache import InferenceCache
from rad.runtime.decode import Sampler, generate, left_pad, prefill
from rad.runtime.distributed import current_world
from rad.runtime.model import Decoder

DEFAULT_MAX_LENGTH = 4096  # cap on prompt + generation; also bounded by the model's positions
MAX_LOGIT_TOKENS = 2048  # logit rows per teacher-forced batch (memory bound)


def model_max_length(lm: LoadedModel) -> int:
    return min(lm.model.cfg.max_position_embeddings or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)


def _length_order(lengths: Sequence[int]) -> list[int]:
    """Indices longest first: similar lengths share a batch, and the largest batch runs first
    (an out-of-memory shows at once, not at the end)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def pack(items: Sequence[tuple[int, int]], max_rows: int, max_cells: int) -> list[list[int]]:
    """Greedy batches of `items`, each (rows, width), kept in the given order: a batch closes
    before the item that would take it past `max_rows` rows or `max_cells` = its rows x its
    widest item (the padded logits it computes; a width counts as at least 1). An item alone
    always makes a batch. Returns each batch's positions in `items`."""
    batches: list[list[int]] = []
    batch: list[int] = []
    rows = width = 0
    for j, (r, w) in enumerate(items):
        grown = max(width, w, 1)
        if batch and (rows + r > max_rows or grown * (rows + r) > max_cells):
            batches.append(batch)
            batch, rows, grown = [], 0, max(w, 1)
        batch.append(j)
        rows, width = rows + r, grown
    if batch:
        batches.append(batch)
    return batches


def batched_generate(
    lm: LoadedModel,
    contexts: Sequence[Sequence[int]],
    until: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    sampler: Sampler | None = None,
    progress: tqdm | None = None,
) -> list[str]:
    """Continuations of token-id `contexts` (in input order), each cut before the first of
    `until` and after EOS. Decoded with special tokens dropped, as lm-eval's HF backend does."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    tok = lm.tokenizer
    eos = set(lm.eos_token_ids)
    texts: list[str] = [""] * len(contexts)
    order = _length_order([len(c) for c in contexts])
    groups = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]

    def stop(row: int, new: list[int]) -> bool:
        # Special tokens kept here so a stop string such as "<|im_end|>" also matches.
        text = tok.decode(new, skip_special_tokens=False)
        return any(s in text for s in until)

    def one(b: int) -> list[str]:
        ids, mask = left_pad([contexts[i] for i in groups[b]], lm.pad_token_id)
        gen = generate(lm.model, ids, mask, max_new_tokens, eos,
                       stop=stop if until else None, sampler=sampler)
        out = []
        for new in gen.tokens:
            if new and new[-1] in eos:
                new = new[:-1]
            out.append(cut_at_stops(tok.decode(new, skip_special_tokens=True), until))
        if progress is not None:
            progress.update(len(groups[b]))
        return out

    # Under torchrun the batches go round-robin over the ranks (the same batches as one
    # process, so the same tokens). A sampler's random stream runs across batches in order, so
    # sampled generation stays on rank 0.
    world = current_world()
    if sampler is None:
        results = world.map_batches(one, len(groups))
    else:
        results = world.on_main(lambda: [one(b) for b in range(len(groups))])
    for idx, outs in zip(groups, results, strict=True):
        for i, text in zip(idx, outs, strict=True):
            texts[i] = text
    return texts


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    for s in until:
        if s:
            text = text.split(s)[0]
    return text


def continuation_logits(
    model: Decoder,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    batch_size: int = 8,
    max_logit_tokens: int = MAX_LOGIT_TOKENS,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Teacher-forced logits for each (context, continuation) pair: yields (index, (n, V))
    where row j predicts continuation token j. Order is longest first, not input order.

    The sequence is left-truncated to `max_length` tokens (the context loses its start).
    A batch holds at most `batch_size` pairs and `max_logit_tokens` logit rows.
    """
    fulls, n_cont, groups = _continuation_groups(pairs, batch_size, max_logit_tokens, max_length)
    for group in groups:
        yield from _group_logits(model, fulls, n_cont, group, pad_id)


def _continuation_groups(pairs, batch_size: int, max_logit_tokens: int, max_length: int):
    """(full sequences, continuation lengths, batches of pair indices, longest first)."""
    fulls, n_cont = [], []
    for ctx, cont in pairs:
        if not ctx:
            raise ValueError("context must hold at least one token")
        full = (list(ctx) + list(cont))[-(max_length + 1):]
        fulls.append(full)
        n_cont.append(min(len(cont), len(full) - 1))
    order = _length_order([len(f) for f in fulls])
    batches = pack([(1, n_cont[i]) for i in order], batch_size, max_logit_tokens)
    return fulls, n_cont, [[order[j] for j in batch] for batch in batches]


def _group_logits(model: Decoder, fulls, n_cont, group: list[int],
                  pad_id: int) -> list[tuple[int, torch.Tensor]]:
    ids, mask = left_pad([fulls[i][:-1] for i in group], pad_id)  # (B, T)
    T = ids.shape[1]
    k = min(max(max(n_cont[i] for i in group), 1), T)
    with torch.inference_mode():
        cache: InferenceCache = model.allocate_cache(len(group), T)
        if T > k:  # everything before the last k positions only fills the cache
            prefill(model, ids[:, :T - k], mask[:, :T - k], cache)
        logits = model(ids[:, T - k:], mask[:, T - k:], cache=cache)  # (B, k, V)
    return [(i, logits[b, k - n_cont[i]:]) for b, i in enumerate(group)]


def score_continuations(
    model: Decoder,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    batch_size: int = 8,
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: tqdm | None = None,
) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, whether greedy decoding reproduces it) per pair; under
    torchrun the batches go round-robin over the ranks (same batches, same numbers).

    Pairs with the same context (a multiple-choice question's choices) share it: each context
    is prefilled once, its cache row copied for each of its continuations, and only the
    continuations run after it. `batch_size` bounds the continuation rows of a batch."""
    contexts, conts, groups = _shared_context_groups(pairs, batch_size, max_length)

    def one(b: int) -> list[tuple[int, tuple[float, bool]]]:
        scored = []
        for i, logits in _shared_context_logits(model, contexts, conts, groups[b], pad_id):
            cont = torch.tensor(conts[i])
            logp = F.log_softmax(logits.float(), -1)
            total = float(logp.gather(-1, cont[:, None]).sum())
            scored.append((i, (total, bool((logits.argmax(-1) == cont).all()))))
        if progress is not None:
            progress.update(sum(len(members) for _, members in groups[b]))
        return scored

    out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    for part in current_world().map_batches(one, len(groups)):
        for i, answer in part:
            out[i] = answer
    return out


def _shared_context_groups(pairs, batch_size: int, max_length: int):
    """(context per pair, continuation per pair, batches): each batch a list of (context,
    indices of the pairs continuing it), longest first. The sequence is left-truncated to
    `max_length` + 1 tokens (the context loses its start)."""
    contexts, conts = [], []
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx:
            raise ValueError("context must hold at least one token")
        full = (list(ctx) + list(cont))[-(max_length + 1):]
        n = min(len(cont), len(full) - 1)
        contexts.append(tuple(full[:len(full) - n]))
        conts.append(full[len(full) - n:])
        by_context.setdefault(contexts[-1], []).append(i)
    # Longest continuations first: they set the padded width of a batch's second call.
    order = sorted(by_context, key=lambda c: (-max(len(conts[i]) for i in by_context[c]),
                                              -len(c)))
    items = [(len(by_context[c]), max(len(conts[i]) for i in by_context[c])) for c in order]
    batches = pack(items, batch_size, MAX_LOGIT_TOKENS)
    return contexts, conts, [[(order[j], by_context[order[j]]) for j in batch]
                             for batch in batches]


def _shared_context_logits(model: Decoder, contexts, conts, group,
                           pad_id: int) -> list[tuple[int, torch.Tensor]]:
    """(pair index, (n, V) logits predicting its n continuation tokens) for one batch.

    The contexts are prefilled left-padded (their last position predicts every continuation's
    first token); each continuation row then starts from a copy of its context's cache row and
    runs its tokens but the last, right-padded (padding after a row's real tokens changes none
    of its logits)."""
    ids, mask = left_pad([ctx for ctx, _ in group], pad_id)
    members = [(g, i) for g, (_, idx) in enumerate(group) for i in idx]
    k = max(len(conts[i]) for _, i in members)
    with torch.inference_mode():
        cache: InferenceCache = model.allocate_cache(len(group), ids.shape[1] + max(k - 1, 0))
        first = prefill(model, ids, mask, cache)  # (C, V)
        rest = None
        if k > 1:
            tails = torch.full((len(members), k - 1), pad_id, dtype=torch.long)
            tail_mask = torch.zeros_like(tails)
            for r, (_, i) in enumerate(members):
                n = len(conts[i]) - 1
                if n > 0:
                    tails[r, :n] = torch.tensor(conts[i][:-1])
                    tail_mask[r, :n] = 1
            rows = cache.select_rows(torch.tensor([g for g, _ in members]))
            rest = model(tails, tail_mask, cache=rows)  # (R, k - 1, V)
    out = []
    for r, (g, i) in enumerate(members):
        n = len(conts[i])
        if n == 0:
            out.append((i, first[g][None][:0]))
            continue
        parts = [first[g][None]] + ([rest[r, :n - 1]] if n > 1 else [])
        out.append((i, torch.cat(parts)))
    return out
