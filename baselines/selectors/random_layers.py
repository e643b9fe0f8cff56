"""Random layers: the floor any informed selector must beat."""

from __future__ import annotations

import random

from rad.method.select import SelectionRequest, register_selector


@register_selector("random")
def random_layers(req: SelectionRequest) -> list[int]:
    """k layers drawn at random with the request's seed."""
    return sorted(random.Random(req.seed).sample(range(req.n_layers), req.k))
