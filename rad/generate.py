"""Greedy generation on the runtime: batched prefill with left padding, then one-token decode
steps into a preallocated cache."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from rad.model import Decoder


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per row, cut after the first EOS (EOS included) or
    # after the token at which `stop` ended the row
    prompt_len: int  # padded prompt length
    cache_bytes: int  # bytes of inference state allocated


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


@torch.inference_mode()
def greedy_generate(
    model: Decoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 128,
    eos_token_ids: Collection[int] = (),
    skip: Collection[int] = (),
    stop_at_eos: bool = True,
    progress: bool = False,
    stop: Callable[[int, list[int]], bool] | None = None,
    pick: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Generation:
    """Greedy decode `max_new_tokens` (fewer if every row hit EOS and `stop_at_eos`).

    stop(row, new_tokens): called after each step for every unfinished row; True ends the row
    there (e.g. a stop string appeared in its text). Ended rows stay in the batch until all end.
    pick(logits (B, V)) -> (B,): next-token choice; default argmax (greedy), e.g. a seeded sampler.
    """
    B, T = input_ids.shape
    device = model.device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    cache = model.allocate_cache(B, T + max_new_tokens)
    logits = model(input_ids, attention_mask, cache=cache, skip=skip, last_only=True)
    eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    ends = [0] * B  # new-token count at which `stop` ended a row (0: not ended by `stop`)
    rows: list[list[int]] = [[] for _ in range(B)]  # new tokens so far, for `stop`
    out = []
    bar = tqdm(total=max_new_tokens, desc="generate", unit="tok", disable=not progress,
               leave=False)
    for step in range(max_new_tokens):
        bar.update()
        nxt = logits[:, -1].argmax(-1) if pick is None else pick(logits[:, -1])  # (B,)
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
        logits = model(nxt[:, None], cache=cache, skip=skip)
    bar.close()
    tokens = [row[:end] if end else row
              for row, end in zip(torch.stack(out, 1).tolist(), ends, strict=True)]
    return Generation([_cut_at_eos(row, eos_token_ids) for row in tokens], T, cache.nbytes())


def _cut_at_eos(row: list[int], eos_ids: Collection[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in eos_ids:
            return row[: i + 1]
    return row
