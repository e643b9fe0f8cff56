"""One inference-state object for a whole model: a per-layer state from each mixer, plus the
bookkeeping every mixer shares (how many slots are filled, which slots hold real tokens).

Protocol for a layer state: `rollback(length)` forgets everything from slot `length` on (for
attention that is free: stale K/V slots are overwritten before they are read again);
`copy_rows_from(src)` fills every row from a 1-row state; `nbytes()`; `select_rows(rows)`.

Bookkeeping has one writer each: `InferenceCache.append` is the only way tokens enter the cache
(slots, validity, RoPE positions, length), and a Mamba2 state advances its own length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVState:
    k: torch.Tensor  # (B, n_kv_heads, max_len, head_dim)
    v: torch.Tensor  # (B, n_kv_heads, max_len, head_dim)

    def rollback(self, length: int) -> None:
        del length  # slots past `length` are masked out by the cache length and later overwritten

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def select_rows(self, rows: torch.Tensor) -> KVState:
        return KVState(self.k[rows], self.v[rows])

    def copy_rows_from(self, src: KVState) -> None:
        self.k.copy_(src.k.expand_as(self.k))
        self.v.copy_(src.v.expand_as(self.v))


@dataclass
class InferenceCache:
    states: list
    key_valid: torch.Tensor  # (B, max_len) bool: slot holds a real (non-padding) token
    n_valid: torch.Tensor  # (B,) long: real tokens so far per row = next RoPE position
    length: int = 0  # slots filled (same for every row: padding is on the left)

    @classmethod
    def allocate(cls, states: list, batch: int, max_len: int, device) -> InferenceCache:
        return cls(states, torch.zeros(batch, max_len, dtype=torch.bool, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def max_len(self) -> int:
        return self.key_valid.shape[1]

    @property
    def batch(self) -> int:
        return self.key_valid.shape[0]

    def append(self, token_mask: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The one way T tokens per row enter the cache, before the layers write their states.
        token_mask (B, T): False on left padding. Returns (start, positions, key_valid): the slot
        of the first new token, each new token's RoPE position (B, T), and the validity of all
        slots so far (B, start + T)."""
        start, end = self.length, self.length + token_mask.shape[1]
        if end > self.max_len:
            raise ValueError(f"cache holds {self.max_len} tokens; {end} needed")
        # A row's position counts its real tokens only (padding takes no position).
        positions = (self.n_valid[:, None] + token_mask.long().cumsum(1) - 1).clamp(min=0)
        self.key_valid[:, start:end] = token_mask
        self.n_valid += token_mask.sum(1)
        self.length = end
        return start, positions, self.key_valid[:, :end]

    def rollback(self, length: int) -> None:
        """Forget slots [length, self.length): used by speculative decoding on rejection."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}; cache holds {self.length}")
        self.length = length
        self.n_valid = self.key_valid[:, :length].sum(1)
        for state in self.states:
            state.rollback(length)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.states)

    def select_rows(self, rows: torch.Tensor) -> InferenceCache:
        """A new cache whose row i is a copy of row rows[i] (rows may repeat): one prefix
        prefilled once, then continued several ways (multiple-choice scoring)."""
        return InferenceCache([s.select_rows(rows) for s in self.states], self.key_valid[rows],
                              self.n_valid[rows], self.length)


def replicate(src: InferenceCache, dst: InferenceCache) -> None:
    """Copy a 1-row cache into every row of `dst` (same layer kinds and max_len). Decoding reads
    the same bytes whatever the values are, so a bench prefills one row, not `batch` rows."""
    for s, d in zip(src.states, dst.states, strict=True):
        d.copy_rows_from(s)
    dst.key_valid.copy_(src.key_valid.expand_as(dst.key_valid))
    dst.n_valid.copy_(src.n_valid.expand_as(dst.n_valid))
    dst.length = src.length
