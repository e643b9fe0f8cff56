"""One precision policy for every compute-bound stage: teacher targets, distillation (and the
stage-1 alignment), held-out KL, the KL profile, the teacher-forced acceptance objective,
likelihood scoring, generation and decode.

Two ways a stage runs in bf16, one per kind of stage:
- **Inference-only stages** (teacher targets, the KL profile, the acceptance objective,
  likelihood scoring, generation, decode) run a bf16 *copy of the weights*
  (`inference_dtype`, `for_inference`): half the bytes a step reads, and no casts. Autocast
  over fp32 weights would re-cast every weight on every forward (its cast cache keeps only
  leaves that require grad), which took 22% of the targets pass here.
- **Training** runs bf16 autocast over fp32 master weights (`autocast`), with the frozen
  weights' bf16 casts made once per run (`rad.method.distill.loop`). Held-out KL, the
  distillation curve, stays fp32 on the fp32 masters, so curves compare across precisions.

`auto` resolves to bf16 where the hardware multiplies bf16 natively (CUDA; CPUs with
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
import copy
from dataclasses import asdict, dataclass

import torch

from rad.runtime.linear import Linear
from rad.runtime.modes import PRECISIONS

__all__ = ["FP32", "PRECISIONS", "FrozenCasts", "Precision", "for_inference", "native_bf16",
           "resolve_precision"]


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

    def inference_dtype(self, stored: torch.dtype) -> torch.dtype:
        """The dtype an inference-only stage runs weights stored in `stored` in: bf16 when
        resolved to bf16, else as stored (fp32 never up-casts bf16 weights)."""
        return torch.bfloat16 if self.bf16 and stored.is_floating_point else stored

    def as_dict(self) -> dict:
        return asdict(self)


def for_inference(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """`model` itself where its dtype already is the precision's inference dtype, else a copy
    cast to it (the caller's weights stay as they are: a teacher may also be a student's
    source, and fp32 masters must not be rounded)."""
    stored = next(model.parameters()).dtype
    dtype = precision.inference_dtype(stored)
    if dtype == stored:
        return model
    return copy.deepcopy(model).to(dtype)


FP32 = Precision("fp32", "fp32", "the reference")


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} ({', '.join(PRECISIONS)})")
    native, why = native_bf16(device)
    if requested == "auto":
        return Precision("auto", "bf16" if native else "fp32", f"auto: {why}")
    return Precision(requested, requested, f"asked for {requested} ({why})")


class FrozenCasts:
    """bf16 copies of a model's frozen Linear weights, made once per training run and swapped
    in around each training forward and backward (`applied`). Why: autocast caches casts only
    for leaves that require grad, so every frozen fp32 weight (the teacher's attention and
    MLPs, the tied head: most of an SSM-only hybrid) was re-cast on every forward. The same
    casts made once give the same numbers (checked: an identical curve with and without). The fp32
    masters stay in place for everything else (held-out KL, checkpoints, export), and the
    embedding keeps its fp32 weight (the residual stream stays fp32), only the head's tied
    copy is swapped. A no-op unless the precision resolved to bf16."""

    def __init__(self, model: torch.nn.Module, precision: Precision):
        self.swaps: list[tuple[torch.nn.Module, torch.nn.Parameter, torch.nn.Parameter]] = []
        if not precision.bf16:
            return
        with torch.no_grad():
            for mod in model.modules():
                w = mod._parameters.get("weight") if isinstance(mod, Linear) else None
                if w is not None and not w.requires_grad and w.dtype == torch.float32:
                    cast = torch.nn.Parameter(w.to(torch.bfloat16), requires_grad=False)
                    self.swaps.append((mod, w, cast))

    @contextlib.contextmanager
    def applied(self):
        for mod, _, cast in self.swaps:
            mod._parameters["weight"] = cast
        try:
            yield
        finally:
            for mod, master, _ in self.swaps:
                mod._parameters["weight"] = master
