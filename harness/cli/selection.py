"""`rad diagnose`, `rad select`, `rad compare-sets`, `rad compare-samplers`: RAD's steps 1-2 on a
real model; `rad kl-profile`: the measurement the kl-guided baseline selects from."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.cli.args import (
    add_compile_arg,
    add_draft_args,
    add_model_args,
    add_precision_arg,
    int_list,
    str_list,
)
from harness.cli.runtime import check_draft_args
from harness.common.errors import UserError
from harness.common.files import ensure_writable_dir, read_json
from harness.experiment.distill_data import DataConfig
from harness.experiment.prompt_sets import parse_spec
from harness.experiment.selection import (
    comparison_sets,
    load_workload,
    run_compare,
    run_compare_samplers,
    run_diagnose,
    run_kl_profile,
    run_select,
)
from harness.models import inference_dtype, load_model, require_same_tokenizer
from rad.method.diagnose import SpecSettings
from rad.method.select import OBJECTIVES, SAMPLERS
from rad.runtime.precision import resolve_precision

DESCRIPTIONS = {
    "diagnose": "Skip each attention layer alone in the self-speculative draft and record "
    "acceptance rate and mean accepted length per layer: OUT/redundancy.json and "
    "OUT/redundancy.png.",
    "select": "optuna over a relaxed mask in [0,1]^L, top-k to a skip set, maximising the "
    "self-speculative objective. Writes OUT/selection.json; the study lives in --storage "
    "(default OUT/study.sqlite3), so rerunning the same command resumes it.",
    "compare-samplers": "Runs the layer search from scratch with each --samplers x --seeds "
    "(same --trials budget, no warm start) and plots the best-so-far curves beside the "
    "redundancy profile's top-k (--redundancy) and the uniform set as lines: "
    "OUT/sampler_curves.{json,md,png}. Every skip set is measured once for all runs.",
    "kl-profile": "Restore-one-layer KL for the kl-guided selector: KL(teacher || model) of the "
    "model with every attention layer skipped, and with each layer restored alone, on the "
    "first --rows training rows of the distillation data: OUT/kl_profile.json.",
    "compare-sets": "Measures the Bayesian set (--selection), the uniform interleave, the "
    "profile's top-k and bottom-k (--redundancy) and --random seeded random sets against plain "
    "greedy decoding in one run, each beside its teacher-forced objective (Spearman rank "
    "correlation in the table: the objective's validation).",
}


OBJECTIVE_HELP = ("accepted-length (default: ranks sets like throughput at fixed k, without "
                  "timing noise), tokens-per-s (the paper's), or teacher-forced (accepted-length "
                  "simulated exactly from the verifier's cached continuations: no decoding "
                  "loop, 20-40x faster)")


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=DESCRIPTIONS[name])
    add_model_args(p)
    if name == "kl-profile":
        _add_kl_profile_args(p)
        return
    p.add_argument("--prompts", default="gsm8k-train:16",
                   help="prompt set SOURCE:N from training data (default gsm8k-train:16)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    add_draft_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    if name in ("diagnose", "select", "compare-samplers"):
        p.add_argument("--objective", default="accepted-length", choices=OBJECTIVES.names(),
                       help=OBJECTIVE_HELP)
    if name == "compare-samplers":
        p.add_argument("--k", type=int, required=True, help="number of attention layers to skip")
        p.add_argument("--trials", type=int, default=500, help="trials per sampler and seed")
        p.add_argument("--samplers", type=str_list, default=["tpe", "cmaes", "random"],
                       help=f"comma-separated, of {', '.join(SAMPLERS.names())} "
                       "(default tpe,cmaes,random)")
        p.add_argument("--seeds", type=int_list, default=[0, 1], help="default 0,1")
        p.add_argument("--redundancy", type=Path,
                       help="redundancy.json from 'rad diagnose': its top-k as a line")
    if name == "select":
        p.add_argument("--k", type=int, required=True, help="number of attention layers to skip")
        p.add_argument("--trials", type=int, default=40, help="completed trials wanted in total")
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
    add_precision_arg(p)
    add_compile_arg(p)
    p.set_defaults(handler={"diagnose": cmd_diagnose, "select": cmd_select,
                            "compare-sets": cmd_compare_sets,
                            "compare-samplers": cmd_compare_samplers}[name])


def _add_kl_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", help="distillation teacher (default: --model itself)")
    p.add_argument("--rows", type=int, default=8,
                   help="training rows scored (default 8; never the held-out rows the "
                   "leaderboard's KL is measured on)")
    dd = DataConfig()
    for flag, default in (("--seq-len", dd.seq_len), ("--train-seqs", dd.n_train),
                          ("--heldout-seqs", dd.n_heldout), ("--topk", dd.topk)):
        p.add_argument(flag, type=int, default=default,
                       help=f"distillation data, as 'rad distill' (default {default})")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_precision_arg(p)
    add_compile_arg(p)
    p.set_defaults(handler=cmd_kl_profile)


def _workload(args: argparse.Namespace):
    check_draft_args(args)
    settings = SpecSettings(args.gamma, args.max_new_tokens, args.stop_threshold)
    # these commands load on the CPU (load_model's default device); so does kl-profile
    return load_workload(args.model, args.prompts, settings, args.dtype,
                         precision=resolve_precision(args.precision, "cpu"))


def cmd_diagnose(args) -> int:
    parse_spec(args.prompts)  # bad input fails before the model loads
    ensure_writable_dir(args.out)
    path = run_diagnose(_workload(args), args.out, args.objective)
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


def cmd_compare_samplers(args) -> int:
    parse_spec(args.prompts)
    for name in args.samplers:
        SAMPLERS.get(name)  # an unknown name fails before the model loads
    redundancy = read_json(args.redundancy, "redundancy profile") if args.redundancy else None
    path = run_compare_samplers(_workload(args), args.k, args.samplers, args.seeds,
                                args.trials, args.objective, redundancy, args.out)
    print(path.read_text())
    return 0


def cmd_kl_profile(args) -> int:
    try:
        data_cfg = DataConfig(seq_len=args.seq_len, n_train=args.train_seqs,
                              n_heldout=args.heldout_seqs, topk=args.topk)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not 1 <= args.rows <= args.train_seqs:
        raise UserError(f"--rows must be in 1..{args.train_seqs} (--train-seqs)")
    ensure_writable_dir(args.out)
    precision = resolve_precision(args.precision, "cpu")
    dtype = inference_dtype(args.dtype, precision)
    lm = load_model(args.model, dtype=dtype)
    teacher = lm if args.teacher in (None, args.model) else load_model(args.teacher, dtype)
    require_same_tokenizer(lm, teacher, "the KL compares token distributions")
    path = run_kl_profile(lm, teacher, data_cfg, args.rows, args.out, args.dtype, precision)
    record = json.loads(path.read_text())
    order = sorted(record["layers"], key=lambda e: -e["benefit"])
    print(f"all attention skipped: KL {record['all_skipped_kl']:.4f}; restoring helps most: "
          + ", ".join(f"{e['layer']} ({e['benefit']:+.4f})" for e in order[:5])
          + f"; wrote {path}")
    return 0
