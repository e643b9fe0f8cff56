"""What every command's parser shares: the one-line-error parser, list types, model, precision
and compile flags."""

from __future__ import annotations

import argparse
import sys

from rad.runtime.modes import COMPILE_MODES, PRECISIONS


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    return values


def str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


class Parser(argparse.ArgumentParser):
    """argparse that keeps the CLI's contract: one `rad: error:` line and exit code 2."""

    def error(self, message: str):
        print(f"rad: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def add_model_args(p: argparse.ArgumentParser, dtype_help: str = "fp32|bf16",
                   required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="registered name (see 'rad models'), local HF folder, or hub id")
    p.add_argument("--dtype", default="fp32", help=f"{dtype_help} (default fp32: the reference)")


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """`--precision auto|fp32|bf16`: the one policy of every compute-bound stage
    (rad.runtime.precision), resolved once per command."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bf16 where the hardware multiplies bf16 natively "
                   "(CUDA; CPUs with AMX-BF16 or AVX512-BF16), else fp32. Inference stages "
                   "run bf16 weights, training bf16 autocast over fp32 master weights. The "
                   "resolved choice and its reason are recorded in the output.")


def add_draft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gamma", type=int, default=4, help="most tokens drafted per verify step")
    p.add_argument("--stop-threshold", type=float, default=None,
                   help="adaptive stop: end a draft when its top-1 probability falls below")


def add_compile_arg(p: argparse.ArgumentParser, bench: bool = False) -> None:
    """`--compile auto|on|off`: the compiled static decode step (rad.runtime.compile_mode)."""
    extra = (" A bench times steady state, so here auto means on; compile time is reported "
             "separately." if bench else "")
    p.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                   help="compiled decode step: on (compile every decode shape), off (the eager "
                   "reference), auto (default: on for CUDA; on CPU a shape compiles once it has "
                   "run 2048 eager steps, since compiling costs ~20-40 s per shape)." + extra)
