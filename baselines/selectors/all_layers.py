"""Every layer: the full-SSM baseline."""

from __future__ import annotations

from rad.method.select import SelectionRequest, register_selector


@register_selector("all", replaces_all=True)
def all_layers(req: SelectionRequest) -> list[int]:
    """Every layer (the full-SSM baseline); only k = n_layers makes sense."""
    if req.k != req.n_layers:
        raise ValueError(f"selector 'all' replaces every layer: k must be {req.n_layers}")
    return list(range(req.n_layers))
