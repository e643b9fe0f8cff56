"""The `rad` command line. Every user error is one line on stderr and exit code 2.

One module per command group; this table maps each command to its module, which is imported
only when that command runs (a lazy registry entry, as lm-eval's registry has): so `rad gate`
and `rad report` never import torch, and `rad --help` starts in a blink.
"""

from __future__ import annotations

import importlib
import sys

from harness.cli.args import Parser
from harness.common.errors import UserError
from rad.registry import UnknownNameError
from rad.runtime import compile_mode  # torch-free: the switch for the decode step

# command -> (module defining `add_parser(sub, name, help)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("harness.cli.runtime", "greedy completion of one prompt"),
    "speculate": ("harness.cli.runtime", "greedy self-speculative decoding with a skip-draft"),
    "diagnose": ("harness.cli.selection", "per-layer redundancy profile (RAD step 1)"),
    "select": ("harness.cli.selection", "Bayesian choice of k layers to replace (RAD step 2)"),
    "compare-sets": ("harness.cli.selection",
                     "acceptance and speedup of skip sets side by side"),
    "compare-samplers": ("harness.cli.selection",
                         "layer-search samplers' best-so-far curves at one trial budget"),
    "kl-profile": ("harness.cli.selection",
                   "restore-one-layer KL per attention layer (what kl-guided selects from)"),
    "hybrid": ("harness.cli.hybrid",
               "attention -> Mamba2 hybrids (RAD step 3): build, export to transformers"),
    "methods": ("harness.cli.catalog", "list the registered methods and their recipes"),
    "distill": ("harness.cli.distill",
                "build a method's hybrid and distil it from a teacher (RAD step 4)"),
    "distill-compare": ("harness.cli.distill",
                        "every method x seed at one budget, then the convergence report"),
    "eval": ("harness.cli.eval",
             "accuracy per task, for any registered task (+ fidelity to a teacher)"),
    "models": ("harness.cli.catalog", "list registered teachers"),
    "data": ("harness.cli.catalog", "task data: check or fetch"),
    "bench": ("harness.cli.bench", "benchmarks"),
    "reproduce": ("harness.cli.experiment",
                  "the main job: every method x seed of a profile, then the report"),
    "report": ("harness.cli.results", "(re)write results.json, LEADERBOARD.md, "
               "leaderboard.csv and plots from a run folder"),
    "gate": ("harness.cli.results",
             "regression check: current results.json vs a baseline (exit 1 on any)"),
}


def build_parser(command: str | None = None) -> Parser:
    """The parser; `command`'s subparser in full (its module imported), the others as stubs
    that only carry their help line."""
    parser = Parser(
        prog="rad", description="rad-harness: reproduce RAD (arXiv 2505.22135) beside its "
        "baselines: layer selection, distillation, evaluation and decode throughput.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    before = compile_mode.compile_mode()
    if getattr(args, "compile", None) is not None:
        compile_mode.set_compile_mode(args.compile)
    try:
        return args.handler(args)
    except (UserError, UnknownNameError) as e:
        print(f"rad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rad: interrupted", file=sys.stderr)
        return 130
    finally:
        compile_mode.set_compile_mode(before)  # main() is also called in-process (tests)


if __name__ == "__main__":
    sys.exit(main())
