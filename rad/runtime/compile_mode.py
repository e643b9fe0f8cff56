"""The one switch for the compiled decode step (`rad ... --compile auto|on|off`, or the
environment variable RAD_COMPILE): process-wide, read by `rad.runtime.static_step` once per
decode loop, recorded in every result's provenance. No torch import here.

- off:  the eager `Decoder.forward` everywhere (the reference).
- on:   every decode step (one token, or the verifier's gamma + 1) runs the compiled step.
- auto: on CUDA, as `on` (CUDA graphs are a large win from the first call). On CPU, a step shape
        is compiled once it has run AUTO_CPU_STEPS times eagerly in this process: compiling
        costs ~20-40 s per shape on 2 cores and saves ~5 ms (batch 1) to ~25 ms (batch 8) per
        step on the embedded teacher, so it pays off only on shapes a run keeps using.
"""

from __future__ import annotations

import os

from rad.runtime.modes import COMPILE_MODES

__all__ = ["COMPILE_MODES", "compile_mode", "set_compile_mode"]
AUTO_CPU_STEPS = 2048
# The switch lives in the process environment: a library user (e.g. lm-eval's CLI driving our
# backend) sets it without our CLI, and provenance (harness.common, below this layer) reads it.
ENV = "RAD_COMPILE"


def set_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: use one of {', '.join(COMPILE_MODES)}")
    os.environ[ENV] = mode


def compile_mode() -> str:
    mode = os.environ.get(ENV, "auto")
    if mode not in COMPILE_MODES:
        raise ValueError(f"{ENV}={mode!r}: use one of {', '.join(COMPILE_MODES)}")
    return mode
