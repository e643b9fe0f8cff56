"""Baseline layer selectors, registered into `rad.method.select.SELECTORS` (same signature as
RAD's search: `selector(request) -> sorted list of k distinct layer indices`)."""

from __future__ import annotations

import random

from rad.method.select import SelectionRequest, register_selector


@register_selector("uniform")
def uniform(req: SelectionRequest) -> list[int]:
    """MambaInLlama's interleave: k evenly spaced layers, centred in their strides (for k = L/2
    this is every odd layer, so layer 0 keeps its attention)."""
    return sorted({int((i + 0.5) * req.n_layers / req.k) for i in range(req.k)})


@register_selector("random")
def random_layers(req: SelectionRequest) -> list[int]:
    """k layers drawn at random with the request's seed."""
    return sorted(random.Random(req.seed).sample(range(req.n_layers), req.k))


@register_selector("all", replaces_all=True)
def all_layers(req: SelectionRequest) -> list[int]:
    """Every layer (the full-SSM baseline); only k = n_layers makes sense."""
    if req.k != req.n_layers:
        raise ValueError(f"selector 'all' replaces every layer: k must be {req.n_layers}")
    return list(range(req.n_layers))
