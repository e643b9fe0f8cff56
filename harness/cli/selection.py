"""`rad diagnose`, `rad select`, `rad compare-sets`: RAD's steps 1-2 on a real model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.cli.args import add_draft_args, add_model_args
from harness.cli.runtime import check_draft_args
from harness.common.errors import UserError
from harness.common.files import ensure_writable_dir, read_json
from harness.experiment.prompt_sets import parse_spec
from harness.experiment.selection import (
    comparison_sets,
    load_workload,
    run_compare,
    run_diagnose,
    run_select,
)
from rad.method.diagnose import SpecSettings
from rad.method.select import OBJECTIVES, SAMPLERS

DESCRIPTIONS = {
    "diagnose": "Skip each attention layer alone in the self-speculative draft and record "
    "acceptance rate and mean accepted length per layer: OUT/redundancy.json and "
    "OUT/redundancy.png.",
    "select": "optuna over a relaxed mask in [0,1]^L, top-k to a skip set, maximising the "
    "self-speculative objective. Writes OUT/selection.json; the study lives in --storage "
    "(default OUT/study.sqlite3), so rerunning the same command resumes it.",
    "compare-sets": "Measures the Bayesian set (--selection), the uniform interleave, the "
    "profile's top-k and bottom-k (--redundancy) and --random seeded random sets against plain "
    "greedy decoding in one run, each beside its teacher-forced objective (Spearman rank "
    "correlation in the table: the objective's validation).",
}


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=DESCRIPTIONS[name])
    add_model_args(p)
    p.add_argument("--prompts", default="gsm8k-train:16",
                   help="prompt set SOURCE:N from training data (default gsm8k-train:16)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    add_draft_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    if name == "select":
        p.add_argument("--k", type=int, required=True, help="number of attention layers to skip")
        p.add_argument("--trials", type=int, default=40, help="completed trials wanted in total")
        p.add_argument("--objective", default="accepted-length", choices=OBJECTIVES.names(),
                       help="accepted-length (default: ranks sets like throughput at fixed k, "
                       "without timing noise), tokens-per-s (the paper's), or teacher-forced "
                       "(accepted-length simulated exactly from the verifier's cached "
                       "continuations: no decoding loop, 20-40x faster)")
        p.add_argument("--storage",
                       help="optuna storage URL (default sqlite:///OUT/study.sqlite3)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--sampler", default="tpe", choices=SAMPLERS.names(),
                       help="optuna sampler: tpe (default, RAD's Bayesian search), random, or "
                       "gp (Gaussian process; slow past a few hundred trials)")
        p.add_argument("--redundancy", type=Path,
                       help="redundancy.json from 'rad diagnose': adds its top-k as a warm start")
    elif name == "compare-sets":
        p.add_argument("--k", type=int, required=True)
        p.add_argument("--selection", type=Path, help="selection.json from 'rad select'")
        p.add_argument("--redundancy", type=Path, help="redundancy.json from 'rad diagnose'")
        p.add_argument("--random", type=int, default=3, help="number of random sets")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(handler={"diagnose": cmd_diagnose, "select": cmd_select,
                            "compare-sets": cmd_compare_sets}[name])


def _workload(args: argparse.Namespace):
    check_draft_args(args)
    settings = SpecSettings(args.gamma, args.max_new_tokens, args.stop_threshold)
    return load_workload(args.model, args.prompts, settings, args.dtype)


def cmd_diagnose(args) -> int:
    parse_spec(args.prompts)  # bad input fails before the model loads
    ensure_writable_dir(args.out)
    path = run_diagnose(_workload(args), args.out)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def cmd_select(args) -> int:
    parse_spec(args.prompts)
    if args.k < 1:
        raise UserError(f"--k must be >= 1; got {args.k}")
    path = run_select(_workload(args), args.k, args.trials, args.objective, args.seed,
                      args.out, args.storage, args.redundancy, args.sampler)
    result = json.loads(path.read_text())
    print(f"layers {result['layers']} score {result['score']:.3f} ({result['objective']}, "
          f"{result['sampler']}, {result['trials']} trials, {result['distinct_sets_measured']} "
          f"distinct sets); wrote {path}")
    return 0


def cmd_compare_sets(args) -> int:
    parse_spec(args.prompts)
    if args.repeats < 1 or args.random < 0:
        raise UserError("--repeats must be >= 1 and --random >= 0")
    selection = read_json(args.selection, "selection") if args.selection else None
    redundancy = read_json(args.redundancy, "redundancy profile") if args.redundancy else None
    w = _workload(args)
    n_layers = w.lm.model.cfg.n_layers
    if not 0 < args.k <= n_layers:
        raise UserError(f"--k must be in 1..{n_layers}; got {args.k}")
    sets = comparison_sets(n_layers, args.k, selection, redundancy, args.random, args.seed)
    path = run_compare(w, sets, args.repeats, args.out)
    print(path.read_text())
    return 0
