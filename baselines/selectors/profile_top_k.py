"""Sensitivity (leave-one-out) selection: the k layers whose attention, skipped alone in the
self-speculative draft, costs the least acceptance. This is the redundancy profile RAD's own
diagnosis measures, used directly instead of as the Bayesian search's warm start (SMART's
sensitivity scores in Zebra-Llama are the same idea with another per-layer score)."""

from __future__ import annotations

from rad.method.select import SelectionRequest, profile_top_k, register_selector


@register_selector("profile-top-k", reads="redundancy")
def profile_top_k_selector(req: SelectionRequest) -> list[int]:
    """The redundancy profile's top-k (highest acceptance with the layer skipped alone)."""
    record = req.context["record"]
    if len(record["layers"]) != req.n_layers:
        raise ValueError(f"the redundancy profile has {len(record['layers'])} layers, the model "
                         f"{req.n_layers}")
    return profile_top_k(record, req.k)
