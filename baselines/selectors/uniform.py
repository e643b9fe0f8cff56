"""The uniform interleave (MambaInLlama)."""

from __future__ import annotations

from rad.method.select import SelectionRequest, register_selector


@register_selector("uniform")
def uniform(req: SelectionRequest) -> list[int]:
    """MambaInLlama's interleave: k evenly spaced layers, centred in their strides (for k = L/2
    this is every odd layer, so layer 0 keeps its attention)."""
    return sorted({int((i + 0.5) * req.n_layers / req.k) for i in range(req.k)})
