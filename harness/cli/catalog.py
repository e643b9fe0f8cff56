"""`rad models`, `rad methods`, `rad data`: what is registered, and the task data."""

from __future__ import annotations

from harness.cli.args import Parser, str_list
from harness.common.errors import UserError
from harness.models import TEACHERS
from harness.tasks import data
from harness.tasks.base import TASKS
from rad.method.recipes import RECIPES


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text)
    if name == "data":
        dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION",
                                parser_class=Parser)
        dsub.add_parser("check", help="row counts per task; exit 2 naming what is missing")
        f = dsub.add_parser("fetch",
                            help="download task data from the HF hub into the cache (default "
                            "GSM8K and MATH-500)")
        fetchable = [n for n, t in TASKS.items() if t.data.hub]
        shipped = [t.label for _, t in TASKS.items() if not t.data.hub]
        f.add_argument("--tasks", type=str_list, default=["gsm8k", "math500"],
                       help=f"comma-separated: {', '.join(fetchable)} ({', '.join(shipped)} "
                       "ships with its package)")
    p.set_defaults(handler={"models": cmd_models, "methods": cmd_methods,
                            "data": cmd_data}[name])


def cmd_models(args) -> int:
    for name, teacher in TEACHERS.items():
        print(f"{name:24s} {teacher.description}")
    return 0


def cmd_methods(args) -> int:
    print(f"{'method':14s} {'selector':9s} {'init':9s} {'trains':9s} {'loss':11s} extras")
    for r in (RECIPES.get(n) for n in RECIPES):
        extras = ", ".join(f"{k}={v}" for k, v in (("ce_weight", r.ce_weight),
                                                     ("align_steps", r.align_steps)) if v)
        print(f"{r.name:14s} {r.selector:9s} {r.init or '-':9s} {r.trainable or '-':9s} "
              f"{r.loss:11s} {extras or '-'}")
        print(f"{'':14s} {r.description}")
    return 0


def cmd_data(args) -> int:
    if args.data_command == "fetch":
        for path in data.fetch(tuple(args.tasks)):
            print(f"wrote {path}")
        return 0
    rows = data.check()
    for task, split, count, _ in rows:
        print(f"{task:10s} {split:6s} {count if count is not None else '-':>6}")
    errors = [e for *_, e in rows if e]
    if errors:
        raise UserError(errors[0])
    return 0
