"""The runtime's Linear layer and its weight-layout switch (shared by attention, MLP and Mamba2)."""

from __future__ import annotations

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.weight.t()
        return out if self.bias is None else out + self.bias


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
