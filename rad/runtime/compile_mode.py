"""The one switch for the compiled decode step (`rad ... --compile auto|on|off`): process-wide,
read by `rad.runtime.static_step` on every step, recorded in every result's provenance. No torch
import here, so the presentation commands can record the mode without paying for torch.

- off:  the eager `Decoder.forward` everywhere (the reference).
- on:   every decode step (one token, or the verifier's gamma + 1) runs the compiled step.
- auto: on CUDA, as `on` (CUDA graphs are a large win from the first call). On CPU, a step shape
        is compiled once it has run AUTO_CPU_STEPS times eagerly in this process: compiling
        costs ~20-40 s per shape on 2 cores and saves ~5 ms (batch 1) to ~25 ms (batch 8) per
        step on the embedded teacher, so it pays off only on shapes a run keeps using.
"""

from __future__ import annotations

COMPILE_MODES = ("auto", "on", "off")
AUTO_CPU_STEPS = 2048

_mode = "auto"


def set_compile_mode(mode: str) -> None:
    global _mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: use one of {', '.join(COMPILE_MODES)}")
    _mode = mode


def compile_mode() -> str:
    return _mode
