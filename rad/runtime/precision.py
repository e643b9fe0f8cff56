"""One precision policy for every compute-bound stage: teacher targets, distillation (and the
stage-1 alignment), held-out KL, the KL profile, the teacher-forced acceptance objective and
likelihood scoring.

`auto` resolves to bf16 autocast where the hardware multiplies bf16 natively (CUDA; CPUs with
AMX-BF16 or AVX512-BF16, where a bf16 GEMM ran ~8x fp32 on 2 cores), else to fp32, and says
why; the resolved policy goes into provenance and every result. What stays fp32 under bf16
autocast, and why: master weights and optimiser state (AdamW's small updates vanish in bf16's
8-bit mantissa), the losses and log-softmax over the vocabulary (computed on `.float()` logits:
the teacher's tail mass and the KL's small differences need fp32), RMSNorm's statistics, and
the SSM recurrence and its state (`rad.runtime.ssd.scan_dtype`: decay products over thousands
of steps). Only matmuls (projections, attention, MLPs, the LM head) run in bf16.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """(whether bf16 matmuls are native and fast on `device`, why)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "CUDA with bf16 tensor cores" if ok else "CUDA device without native bf16"
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return True, "CPU with AMX-BF16 matrix units"
        if torch.cpu._is_avx512_bf16_supported():
            return True, "CPU with AVX512-BF16"
        return False, "CPU without AMX or AVX512-BF16 (bf16 would be emulated, slower than fp32)"
    return False, f"{device.type}: no bf16 policy"


@dataclass(frozen=True)
class Precision:
    requested: str  # auto | fp32 | bf16
    resolved: str  # fp32 | bf16
    reason: str

    @property
    def bf16(self) -> bool:
        return self.resolved == "bf16"

    def autocast(self, device: torch.device | str):
        """bf16 autocast on `device` when resolved to bf16, else a no-op context."""
        device = torch.device(device)
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def as_dict(self) -> dict:
        return asdict(self)


FP32 = Precision("fp32", "fp32", "the reference")


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} ({', '.join(PRECISIONS)})")
    native, why = native_bf16(device)
    if requested == "auto":
        return Precision("auto", "bf16" if native else "fp32", f"auto: {why}")
    return Precision(requested, requested, f"asked for {requested} ({why})")
