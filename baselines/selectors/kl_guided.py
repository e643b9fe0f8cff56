"""KL-guided layer selection (fla-org/hybrid-distillation, ICLR 2026): score each attention
layer by how much restoring it alone lowers KL(teacher || model) of a model whose attention
layers are all replaced; keep the layers that help most as attention and replace the k that
help least.

"All replaced" is the skip init's starting point here: a `skip`-initialised mixer outputs zero,
so the all-replaced model is the model with every attention sub-layer skipped, and restoring
one layer is skipping all the others (one forward per layer, no training). The reference method
starts from a trained all-linear student instead; ours measures the same question before any
training, with the init every selector's recipe uses. The rows are the distillation data's
*training* rows (the caller's choice, see `harness.experiment.selection.run_kl_profile`): the
leaderboard's held-out KL is measured on the held-out rows, so scoring layers on those would
tune the selector on the test set.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from rad.method.distill.loop import heldout_kl
from rad.method.distill.losses import TeacherTargets
from rad.method.select import SelectionRequest, register_selector, top_k
from rad.runtime.model import Decoder


@torch.no_grad()
def restore_one_kl(model: Decoder, ids: torch.Tensor, targets: TeacherTargets,
                   batch_size: int = 8, progress: bool = True) -> dict:
    """KL of the all-skipped model and, per layer, with that layer's attention restored alone;
    benefit = how much the restoration lowers the KL (higher: the layer matters more)."""
    everything = frozenset(range(model.cfg.n_layers))
    base = heldout_kl(model, ids, targets, batch_size, skip=everything)
    layers = []
    for layer in tqdm(sorted(everything), desc="restore-one-layer KL", unit="layer",
                      disable=not progress):
        kl = heldout_kl(model, ids, targets, batch_size, skip=everything - {layer})
        layers.append({"layer": layer, "kl": kl, "benefit": base - kl})
    return {"all_skipped_kl": base, "layers": layers}


@register_selector("kl-guided", reads="kl-profile")
def kl_guided(req: SelectionRequest) -> list[int]:
    """The k layers whose lone restoration lowers the all-replaced model's KL least."""
    entries = req.context["record"]["layers"]
    if len(entries) != req.n_layers:
        raise ValueError(f"the KL profile has {len(entries)} layers, the model {req.n_layers}")
    return top_k([-e["benefit"] for e in entries], req.k)
