"""Trainable policies: which parameters a method distils (every other one stays frozen,
bit-identical). RAD trains only the new Mamba2 mixers; plain distillation trains all."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rad.registry import Registry
from rad.runtime.mamba2 import Mamba2
from rad.runtime.model import Decoder


def new_ssm_parameters(model: Decoder) -> dict[str, torch.nn.Parameter]:
    return {f"layers.{i}.mixer.{n}": p for i, blk in enumerate(model.layers)
            if isinstance(blk.mixer, Mamba2) for n, p in blk.mixer.named_parameters()}


# name -> (model -> the parameters to train, by name): what a recipe's `trainable` names.
TRAINABLE_POLICIES: Registry[Callable[[Decoder], dict[str, torch.nn.Parameter]]] = Registry(
    "trainable policy")
TRAINABLE_POLICIES.register("ssm-only", new_ssm_parameters)  # RAD: only the new Mamba2 mixers
TRAINABLE_POLICIES.register("all", lambda model: dict(model.named_parameters()))  # every one


def set_trainable(model: Decoder, policy: str) -> dict[str, torch.nn.Parameter]:
    select = TRAINABLE_POLICIES.get(policy)
    model.requires_grad_(False)
    params = select(model)
    if not params:
        raise ValueError(f"policy {policy!r} leaves nothing to train (no Mamba2 layer?)")
    for p in params.values():
        p.requires_grad_(True)
    return params
