"""RAD step 1, diagnosis: how well does the model draft for itself with attention layers
skipped? Measured by running self-speculative decoding over a fixed prompt set."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from rad.runtime.decode import SpecStats, speculative_generate
from rad.runtime.model import Decoder


@dataclass(frozen=True)
class SpecSettings:
    gamma: int = 4
    max_new_tokens: int = 64
    stop_threshold: float | None = None  # Draft & Verify's adaptive stop; None = fixed gamma

    def as_dict(self) -> dict:
        return asdict(self)


def measure_skip_set(model: Decoder, prompts: Sequence[torch.Tensor], skip: Collection[int],
                     settings: SpecSettings, eos_token_ids: Collection[int] = ()) -> SpecStats:
    """Self-speculative decoding of every prompt (each (1, T)) with `skip`; stats summed."""
    total = SpecStats()
    for ids in prompts:
        res = speculative_generate(model, ids, settings.max_new_tokens, settings.gamma,
                                   eos_token_ids, skip=skip,
                                   stop_threshold=settings.stop_threshold)
        total = total.merge(res.stats)
    return total


def redundancy_profile(n_layers: int, measure: Callable[[frozenset[int]], SpecStats],
                       progress: bool = True) -> list[dict]:
    """One entry per layer: the draft's acceptance with that layer's attention alone skipped.
    A high acceptance means the model barely needs that attention layer. `measure`: skip set ->
    summed stats, by real decoding (`measure_skip_set`) or the exact teacher-forced simulation
    (`rad.method.acceptance`, same counts, no times)."""
    out = []
    for layer in tqdm(range(n_layers), desc="redundancy profile", unit="layer",
                      disable=not progress):
        s = measure(frozenset({layer}))
        out.append({"layer": layer, "acceptance_rate": s.acceptance_rate,
                    "mean_accepted_length": s.mean_accepted_length, "drafted": s.drafted,
                    "accepted": s.accepted, "verify_steps": s.verify_steps,
                    "tokens_per_s": s.tokens_per_s if s.total_s else None})
    return out
