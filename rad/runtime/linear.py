"""The runtime's Linear layer and its weight-layout switch (shared by attention, MLP and Mamba2)."""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn


class Linear(nn.Linear):
    """nn.Linear whose weight may be stored in-major (a transposed view of an (in, out) buffer).

    Why: on these AVX2 CPUs (MKL) a batch-1 fp32 matmul streams an (in, out)-contiguous weight
    at ~10-13 GB/s against ~7-9 GB/s for nn.Linear's (out, in) layout; at batch 8, and in bf16
    at any batch, the (out, in) layout wins (a matmul micro-benchmark run while the runtime was
    written; no result file keeps it). `x @ W.t()` runs
    the fast kernel for either layout, and the logical shape, state-dict values and autograd
    stay those of nn.Linear.
    """

    # weight-only int8 (`int8_weight_only`): (out, in) int8 and (out,) scales, or None
    int8: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8 is not None:
            out = int8_matmul(x, *self.int8)
        elif streams_weight(x, self.weight):
            out = streamed_matvec(x, self.weight)
        else:
            out = x @ self.weight.t()
        return out if self.bias is None else out + self.bias


STREAMED_MAX_ROWS = 1  # batch-1 decode: the only shape bf16 matmuls lose on (measured below)


def streams_weight(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `x @ weight.t()` runs as `streamed_matvec`: a bf16 weight on CPU, one input row,
    inside a torch.compile trace (eagerly the product would materialise a (rows, out, in)
    tensor). Why: the CPU's bf16 GEMV (oneDNN and MKL) streams a bf16 weight at ~10 GB/s,
    against ~23 GB/s for fp32, so bf16 batch-1 decode ran 0.9x fp32 although it reads half
    the bytes; inductor turns the multiply-and-sum below into one vectorised reduction that
    streams 60 independent 1536 x 576 bf16 weights at ~35 GB/s (3.1 ms against 10.0 ms for
    fp32 MKL). Inside the compiled 30-layer step its kernels reach only ~12-14 GB/s (a chain
    of dependent reductions), so whole-step decode stays at ~1x fp32 (rad bench stages,
    2-core AMX machine, 2026-12-08): see the README's precision section."""
    return (weight.dtype == torch.bfloat16 and weight.device.type == "cpu"
            and x.numel() // x.shape[-1] <= STREAMED_MAX_ROWS
            and torch.compiler.is_compiling())


def streamed_matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.t() as an elementwise product summed over the input dimension, accumulated
    in fp32 (`tests/test_precision.py::test_streamed_matvec_matches_matmul` holds it to the
    matmul)."""
    # (..., 1, in) * (out, in) -> (..., out, in) -> sum over in -> (..., out)
    return (x.unsqueeze(-2).float() * weight.float()).sum(-1).to(x.dtype)


def int8_weight_only(model: nn.Module) -> nn.Module:
    """A bf16 copy of `model` whose Linear layers multiply by per-output-channel symmetric int8
    weights (scale = row max / 127, gpt-fast's weight-only int8), activations in bf16. Why:
    batch-1 decode reads every weight once per token, so its speed is bytes per token; int8
    halves bf16's bytes, and torch's `_weight_int8pack_mm` streams them where the bf16 GEMV
    does not (see `streams_weight`). The bf16 weights stay beside the int8 ones (every other
    path reads them); the tied head gets int8 weights of its own. Accuracy:
    tests/test_precision.py::test_int8_weights_track_bf16_on_the_embedded_teacher."""
    copy = deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        for mod in copy.modules():
            if isinstance(mod, Linear):
                w = mod.weight.float()
                scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
                q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
                mod.int8 = (q.contiguous(), scale.to(torch.bfloat16))
    return copy


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (..., in) @ dequantised(q).t() with q (out, in) int8 and scale (out,): torch's CPU
    weight-only int8 kernel, the dequantised product elsewhere; x runs in the scale's dtype."""
    rows = x.reshape(-1, x.shape[-1]).to(scale.dtype)
    if rows.device.type == "cpu":
        out = torch._weight_int8pack_mm(rows, q, scale)
    else:  # (no fused kernel assumed off the CPU: the reference, dequantised)
        out = rows @ (q.to(scale.dtype) * scale[:, None]).t()
    return out.reshape(*x.shape[:-1], q.shape[0])


def set_weight_layout(model: nn.Module, in_major: bool) -> None:
    """Re-store every Linear weight in-major (True) or out-major (False), values unchanged."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, Linear):
                w = mod.weight.data
                mod.weight.data = w.t().contiguous().t() if in_major else w.contiguous()


def fast_layout_is_in_major(dtype: torch.dtype, device, batch: int = 1) -> bool:
    """The weight layout that decodes fastest: in-major only for fp32 batch-1 on CPU."""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and batch == 1
