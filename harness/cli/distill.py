"""`rad distill` and `rad distill-compare`: RAD's step 4 for one method, or for every method x
seed at one budget with the convergence report."""

from __future__ import annotations

import json
from pathlib import Path

from harness.cli.args import add_compile_arg, add_precision_arg, int_list, str_list
from harness.common.errors import UserError
from harness.common.files import check_output_file
from harness.experiment import distill_compare
from harness.experiment.distill import DistillRequest, distill_configs, run_distill
from harness.experiment.distill_data import DataConfig
from harness.models import parse_dtype
from harness.report.stats import CONVERGENCE_REFERENCE
from harness.report.tables import distillation_markdown
from rad.method.distill.loop import TrainConfig
from rad.method.distill.losses import LOSSES
from rad.method.distill.parallel import STRATEGIES
from rad.method.recipes import get_recipe
from rad.runtime.distributed import init_world

DESCRIPTIONS = {
    "distill": "Picks the layers the method's recipe says (rad: --selection from 'rad select'; "
    "profile-top-k: --selection redundancy.json; kl-guided: --selection kl_profile.json; "
    "plain-distill: uniform; random-swap: seeded random; full-ssm: all), builds the hybrid with "
    "the recipe's init, and trains the recipe's parameters on KL to the teacher's top-k "
    "distributions (computed once, cached under $RAD_CACHE_DIR/targets). OUT becomes a hybrid "
    "folder ('rad generate --model OUT') with curve.jsonl (held-out KL every --eval-every "
    "steps) and distill.json. Re-running the same command resumes from "
    "OUT/train/checkpoint.pt.",
    "distill-compare": "Runs 'rad distill' for each --methods x --seeds cell under "
    "OUT/<method>-s<seed> (finished cells are skipped, unfinished ones resume), then writes "
    "distillation.md/.json/.png to --report-dir: held-out KL curves and the steps each method "
    "needs to reach plain-distill's final KL.",
}


def add_parser(sub, name: str, help_text: str) -> None:
    d = sub.add_parser(name, help=help_text, description=DESCRIPTIONS[name])
    if name == "distill":
        d.add_argument("--method", required=True, help="see 'rad methods'")
        d.add_argument("--model", required=True,
                       help="the student's base model (name or folder)")
        d.add_argument("--k", type=int, help="attention layers to replace (full-ssm: all)")
        d.add_argument("--seed", type=int, default=0, help="init, random layers and data order")
        d.add_argument("--steps", type=int, required=True, help="optimiser steps")
        d.add_argument("--out", type=Path, required=True, help="run folder (new, or to resume)")
        d.add_argument("--selection", type=Path,
                       help="the record the method's selector reads: selection.json from 'rad "
                       "select' (rad), redundancy.json from 'rad diagnose' (profile-top-k), "
                       "kl_profile.json from 'rad kl-profile' (kl-guided)")
        d.add_argument("--teacher", help="teacher model (default: --model, self-distillation); "
                       "must share the tokenizer")
        add_compile_arg(d)
        d.set_defaults(handler=cmd_distill)
    else:
        d.add_argument("--model", required=True)
        d.add_argument("--k", type=int, required=True, help="layers replaced (full-ssm: all)")
        d.add_argument("--seeds", type=int_list, default=[0, 1])
        d.add_argument("--methods", type=str_list,
                       default=["rad", "plain-distill", "random-swap", "full-ssm"])
        d.add_argument("--steps", type=int, required=True)
        d.add_argument("--out", type=Path, required=True, help="folder for the run folders")
        d.add_argument("--report-dir", type=Path, help="where the report goes (default OUT)")
        d.add_argument("--selection", type=Path, help="selection.json for rad-selected methods")
        d.add_argument("--teacher")
        add_compile_arg(d)
        d.set_defaults(handler=cmd_distill_compare)
    _add_train_args(d)


def _add_train_args(d) -> None:
    d.add_argument("--dtype", default="fp32", help="fp32|bf16 weights (default fp32)")
    t, dd = TrainConfig(steps=1), DataConfig()
    d.add_argument("--batch-size", type=int, default=t.batch_size, help="sequences per step")
    d.add_argument("--grad-accum", type=int, default=t.grad_accum)
    d.add_argument("--lr", type=float, default=t.lr)
    d.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    d.add_argument("--eval-every", type=int, default=t.eval_every,
                   help="held-out KL every N steps")
    d.add_argument("--ckpt-every", type=int, default=t.ckpt_every, help="checkpoint every N")
    d.add_argument("--loss", default=None, help="override the recipe's loss "
                   f"({'|'.join(LOSSES.names())})")
    add_precision_arg(d)  # the teacher targets and the training forwards
    d.add_argument("--seq-len", type=int, default=dd.seq_len)
    d.add_argument("--train-seqs", type=int, default=dd.n_train)
    d.add_argument("--heldout-seqs", type=int, default=dd.n_heldout)
    d.add_argument("--topk", type=int, default=dd.topk, help="teacher log-probs kept per token")
    d.add_argument("--parallel", choices=STRATEGIES, default="auto",
                   help="under torchrun: ddp (replicated weights, all-reduce of the trained "
                   "ones), fsdp (FSDP2, everything sharded) or auto (ddp when only the new "
                   "layers train, fsdp when all do); --batch-size stays the global batch")


def _configs(args, method: str) -> tuple[TrainConfig, DataConfig]:
    """The CLI's flags as the one settings mapping `distill_configs` splits."""
    parse_dtype(args.dtype)
    if args.loss is not None and args.loss not in LOSSES:
        raise UserError(f"unknown --loss {args.loss!r}; choose one of "
                        f"{', '.join(LOSSES.names())}")
    settings = {"steps": args.steps, "batch_size": args.batch_size,
                "grad_accum": args.grad_accum, "lr": args.lr,
                "warmup_steps": args.warmup_steps, "eval_every": args.eval_every,
                "ckpt_every": args.ckpt_every, "precision": args.precision,
                "seq_len": args.seq_len, "n_train": args.train_seqs,
                "n_heldout": args.heldout_seqs, "topk": args.topk}
    try:
        return distill_configs(get_recipe(method), settings, loss=args.loss)
    except ValueError as e:
        raise UserError(str(e)) from None


def cmd_distill(args) -> int:
    train_cfg, data_cfg = _configs(args, args.method)
    world = init_world("cpu")  # under torchrun: this rank of the process group
    out = run_distill(DistillRequest(args.method, args.model, args.k, args.seed, args.out,
                                     train_cfg, data_cfg, args.teacher, args.selection,
                                     args.dtype, parallel=args.parallel))
    if not world.is_main:
        return 0
    summary = json.loads((out / "distill.json").read_text())
    print(f"{summary['method']}: layers {summary['layers']}, held-out KL "
          f"{summary['heldout_kl_start']:.4f} -> {summary['heldout_kl_final']:.4f} in "
          f"{summary['steps']} steps; wrote {out}")
    return 0


def cmd_distill_compare(args) -> int:
    if not args.methods or not args.seeds:
        raise UserError("--methods and --seeds need at least one entry each")
    # every method and setting is checked before any run
    configs = {m: _configs(args, m) for m in args.methods}
    if CONVERGENCE_REFERENCE not in args.methods:
        raise UserError(f"--methods must include {CONVERGENCE_REFERENCE} (the reference)")
    report_dir = args.report_dir or args.out
    for name in ("distillation.json", "distillation.md", "distillation.png"):
        check_output_file(report_dir / name)
    train_cfg, data_cfg = configs[args.methods[0]]
    base = DistillRequest(args.methods[0], args.model, args.k, args.seeds[0], args.out,
                          train_cfg, data_cfg, args.teacher, args.selection, args.dtype)
    untrained = [m for m in args.methods if not get_recipe(m).trains]
    if untrained:
        raise UserError(f"method {untrained[0]} trains nothing (it is the reference row)")
    ks = {m: (None if get_recipe(m).layer_selector.replaces_all else args.k)
          for m in args.methods}
    folders = distill_compare.run_cells(base, args.methods, args.seeds, ks,
                                        {m: train for m, (train, _) in configs.items()})
    rep = distill_compare.report(folders)
    for path in distill_compare.write_report(rep, report_dir):
        print(f"wrote {path}")
    print(distillation_markdown(rep))
    return 0
