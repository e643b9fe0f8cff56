"""Layer selectors: which k attention layers become Mamba2 mixers.

Every selector has one signature, `select(request) -> sorted list of k distinct layer indices`,
so later steps (build, distill, report) treat RAD's search and its baselines alike.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SelectionRequest:
    n_layers: int
    k: int
    seed: int = 0
    # What a model-driven selector (RAD's search) needs: model, prompts, options. Baselines
    # ignore it.
    context: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.k <= self.n_layers:
            raise ValueError(f"k must be in 1..{self.n_layers} (the number of layers); "
                             f"got {self.k}")


Selector = Callable[[SelectionRequest], list[int]]
SELECTORS: dict[str, Selector] = {}


def register_selector(name: str):
    def deco(fn: Selector) -> Selector:
        SELECTORS[name] = fn
        return fn
    return deco


def get_selector(name: str) -> Selector:
    if name == "rad" and name not in SELECTORS:
        import rad.selection  # noqa: F401  (registers the Bayesian search)
    if name not in SELECTORS:
        raise KeyError(f"unknown selector {name!r}; known: {', '.join(sorted(SELECTORS))}, rad")
    return SELECTORS[name]


@register_selector("uniform")
def uniform(req: SelectionRequest) -> list[int]:
    """MambaInLlama's interleave: k evenly spaced layers, centred in their strides (for k = L/2
    this is every odd layer, so layer 0 keeps its attention)."""
    return sorted({int((i + 0.5) * req.n_layers / req.k) for i in range(req.k)})


@register_selector("random")
def random_layers(req: SelectionRequest) -> list[int]:
    return sorted(random.Random(req.seed).sample(range(req.n_layers), req.k))


@register_selector("all")
def all_layers(req: SelectionRequest) -> list[int]:
    """Every layer (the full-SSM baseline); only k = n_layers makes sense."""
    if req.k != req.n_layers:
        raise ValueError(f"selector 'all' replaces every layer: k must be {req.n_layers}")
    return list(range(req.n_layers))
