"""Stage-1 layer-wise alignment (MambaInLlama's earlier recipe): before end-to-end
distillation, each new Mamba2 mixer alone regresses the teacher attention's output from the
teacher's input to that layer. Mixers train independently on cached activations, so this costs
one teacher pass plus small per-layer steps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rad.runtime.mamba2 import Mamba2
from rad.runtime.model import Decoder, ForwardContext
from rad.runtime.precision import FP32, Precision, for_inference


@torch.no_grad()
def attention_io(teacher: Decoder, ids: torch.Tensor, layers: Sequence[int],
                 batch_size: int = 8) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: (the attention's input = normed hidden state, its output), (N, T, hidden)."""
    captured: dict[int, tuple[list, list]] = {i: ([], []) for i in layers}

    def recorder(i: int):
        def hook(module, args, out) -> None:  # returning None keeps the module's output
            captured[i][0].append(args[0].detach())
            captured[i][1].append(out.detach())
        return hook

    hooks = [teacher.layers[i].mixer.register_forward_hook(recorder(i)) for i in layers]
    try:
        for start in range(0, ids.shape[0], batch_size):
            teacher(ids[start:start + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return {i: (torch.cat(x), torch.cat(y)) for i, (x, y) in captured.items()}


def _mse(mixer: Mamba2, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    ctx = ForwardContext(None, None, 0, None, False, mask)  # a mixer reads only mask and start
    return F.mse_loss(mixer(x, ctx, None).float(), y.float())


def align_mixer(mixer: Mamba2, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                batch_size: int, generator: torch.Generator, precision: Precision = FP32) -> dict:
    """`steps` AdamW steps of `mixer` (fp32 masters) on MSE to y, the forwards under
    `precision`'s autocast; the MSE before and after is measured without it."""
    params = list(mixer.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    with torch.no_grad():
        before = float(_mse(mixer, x, y))
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
        opt.zero_grad(set_to_none=True)
        with precision.autocast(x.device):
            loss = _mse(mixer, x[rows], y[rows])
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    with torch.no_grad():
        return {"mse_before": before, "mse_after": float(_mse(mixer, x, y))}


def align_mixers(hybrid: Decoder, teacher: Decoder, ids: torch.Tensor, steps: int,
                 lr: float = 1e-3, batch_size: int = 4, seed: int = 0,
                 precision: Precision = FP32) -> dict[int, dict]:
    """Train each Mamba2 mixer of `hybrid` on MSE to the teacher attention it replaced, the
    teacher pass and the steps under `precision` (rad.runtime.precision: a bf16 copy of the
    teacher, autocast over the mixers' fp32 masters). Returns per layer the MSE before and
    after."""
    layers = [i for i, blk in enumerate(hybrid.layers) if isinstance(blk.mixer, Mamba2)]
    io = attention_io(for_inference(teacher, precision), ids, layers)
    dtype = next(hybrid.parameters()).dtype  # the activations in the masters' dtype
    return {i: align_mixer(hybrid.layers[i].mixer, io[i][0].to(dtype), io[i][1].to(dtype),
                           steps, lr, batch_size, torch.Generator().manual_seed(seed * 1000 + i),
                           precision) for i in layers}
