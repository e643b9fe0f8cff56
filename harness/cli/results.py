"""`rad report` and `rad gate`: JSON in, files and an exit code out. Torch-free (tested)."""

from __future__ import annotations

from pathlib import Path

from harness.report.gate import run_gate
from harness.report.run_report import write_report


def add_parser(sub, name: str, help_text: str) -> None:
    if name == "report":
        rr = sub.add_parser(name, help=help_text,
                            description="Reads RUN/run.json and RUN/cells/*.json (and the step "
                            "folders they name) and writes the report files, each atomically.")
        rr.add_argument("run", type=Path, help="run folder of 'rad reproduce'")
        rr.add_argument("--out", type=Path, help="write the report here (default: RUN)")
        rr.set_defaults(handler=cmd_report)
        return
    rg = sub.add_parser(
        name, help=help_text,
        description="Compares quality metrics within the baseline config's tolerances and "
        "timing only as the speedup over the base model measured in the same run. Exit 0: no "
        "regression; 1: a regression; 2: files that cannot be compared (schema, profile or "
        "config mismatch, missing method).")
    rg.add_argument("--baseline", type=Path, required=True, help="e.g. results/smoke/results.json")
    rg.add_argument("--current", type=Path, required=True, help="results.json of the new run")
    rg.set_defaults(handler=cmd_gate)


def cmd_report(args) -> int:
    for path in write_report(args.run, args.out):
        print(f"wrote {path}")
    return 0


def cmd_gate(args) -> int:
    return run_gate(args.baseline, args.current)
