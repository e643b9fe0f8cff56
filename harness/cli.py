"""The `rad` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness.cache import atomic_write_text, check_output_file
from harness.errors import UserError
from harness.eval_cli import add_eval_parser, cmd_eval


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    return values


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


class _Parser(argparse.ArgumentParser):
    """argparse that keeps the CLI's contract: one `rad: error:` line and exit code 2."""

    def error(self, message: str):
        print(f"rad: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def _add_model_args(p: argparse.ArgumentParser, dtype_help: str = "fp32|bf16") -> None:
    p.add_argument("--model", required=True,
                   help="registered name (see 'rad models'), local HF folder, or hub id")
    p.add_argument("--dtype", default="fp32", help=f"{dtype_help} (default fp32: the reference)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rad", description="rad-harness: reproduce RAD (arXiv 2505.22135) beside its "
        "baselines on GSM8K, MATH-500 and HumanEval.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    g = sub.add_parser("generate", help="greedy completion of one prompt",
                       description="Greedy completion on the rad runtime. With --skip, the "
                       "listed layers' attention is bypassed (the self-speculative draft).")
    _add_prompt_args(g)

    sp = sub.add_parser("speculate", help="greedy self-speculative decoding with a skip-draft",
                        description="The draft is the model with --skip layers' attention "
                        "bypassed; the full model verifies. Prints the completion (identical "
                        "to plain greedy) and the acceptance stats.")
    _add_prompt_args(sp)
    _add_draft_args(sp)

    _add_selection_parsers(sub)
    _add_hybrid_parser(sub)
    _add_distill_parsers(sub)

    add_eval_parser(sub)
    sub.add_parser("models", help="list registered teachers")

    d = sub.add_parser("data", help="task data: check or fetch")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION",
                            parser_class=_Parser)
    dsub.add_parser("check", help="row counts per task; exit 2 naming what is missing")
    f = dsub.add_parser("fetch", help="download GSM8K and MATH-500 from the HF hub into the cache")
    f.add_argument("--tasks", type=_str_list, default=["gsm8k", "math500"])

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="WHAT",
                            parser_class=_Parser)
    r = bsub.add_parser("runtime", help="greedy decode tok/s: rad runtime vs HF generate",
                        description="Median of --repeats timed runs after one warm-up, rad and "
                        "HF side by side on the same prompt and token count.")
    r.add_argument("--model", required=True)
    r.add_argument("--batch", type=_int_list, default=[1, 8])
    r.add_argument("--new-tokens", type=int, default=128)
    r.add_argument("--dtype", type=_str_list, default=["fp32", "bf16"])
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--json", type=Path, help="write the records here")
    _add_throughput_parser(bsub)

    rp = sub.add_parser(
        "reproduce", help="the main job: every method x seed of a profile, then the report",
        description="Runs a profile (harness/profiles/NAME.yaml, or any YAML config by path): "
        "RAD's diagnosis and Bayesian selection once, then per method x seed: build + distil "
        "-> evaluate (GSM8K, MATH-500, HumanEval) -> decode throughput beside the base model. "
        "Each step is keyed by a hash of its inputs, so a re-run skips finished work and a "
        "killed run resumes. Writes OUT/results.json, LEADERBOARD.md, leaderboard.csv and "
        "plots (see 'rad report').")
    rp.add_argument("--profile", default="cpu",
                    help="smoke (CI, minutes), cpu (embedded teacher, ~1 h on 2 cores), paper "
                    "(GPU scale), or a path to a .yaml config (default cpu)")
    rp.add_argument("--out", type=Path,
                    help="run folder (default results/<profile>; large artefacts go to "
                    "OUT/steps, which git ignores)")
    rp.add_argument("--allow-code-execution", action="store_true",
                    help="allow HumanEval to execute model-written code (or "
                    "RAD_ALLOW_CODE_EXECUTION=1); needed when the profile evaluates HumanEval")

    rr = sub.add_parser("report", help="(re)write results.json, LEADERBOARD.md, "
                        "leaderboard.csv and plots from a run folder",
                        description="Reads RUN/run.json and RUN/cells/*.json (and the step "
                        "folders they name) and writes the report files, each atomically.")
    rr.add_argument("run", type=Path, help="run folder of 'rad reproduce'")
    rr.add_argument("--out", type=Path, help="write the report here (default: RUN)")

    rg = sub.add_parser(
        "gate", help="regression check: current results.json vs a baseline (exit 1 on any)",
        description="Compares quality metrics within the baseline config's tolerances and "
        "timing only as the speedup over the base model measured in the same run. Exit 0: no "
        "regression; 1: a regression; 2: files that cannot be compared (schema, profile or "
        "config mismatch, missing method).")
    rg.add_argument("--baseline", type=Path, required=True, help="e.g. results/smoke/results.json")
    rg.add_argument("--current", type=Path, required=True, help="results.json of the new run")
    return parser


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    """The flags `generate` and `speculate` share."""
    _add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--skip", type=_int_list, default=[],
                   help="comma-separated layer indices whose attention is skipped (the draft)")


def _add_draft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gamma", type=int, default=4, help="most tokens drafted per verify step")
    p.add_argument("--stop-threshold", type=float, default=None,
                   help="adaptive stop: end a draft when its top-1 probability falls below")


def _add_spec_args(p: argparse.ArgumentParser, prompts: str, tokens: int) -> None:
    _add_model_args(p)
    p.add_argument("--prompts", default=prompts,
                   help=f"prompt set SOURCE:N from training data (default {prompts})")
    p.add_argument("--max-new-tokens", type=int, default=tokens)
    _add_draft_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")


def _add_selection_parsers(sub) -> None:
    dg = sub.add_parser("diagnose", help="per-layer redundancy profile (RAD step 1)",
                        description="Skip each attention layer alone in the self-speculative "
                        "draft and record acceptance rate and mean accepted length per layer: "
                        "OUT/redundancy.json and OUT/redundancy.png.")
    _add_spec_args(dg, "gsm8k-train:16", 64)

    se = sub.add_parser("select", help="Bayesian choice of k layers to replace (RAD step 2)",
                        description="optuna over a relaxed mask in [0,1]^L, top-k to a skip "
                        "set, maximising the self-speculative objective. Writes "
                        "OUT/selection.json; the study lives in --storage (default "
                        "OUT/study.sqlite3), so rerunning the same command resumes it.")
    _add_spec_args(se, "gsm8k-train:16", 64)
    se.add_argument("--k", type=int, required=True, help="number of attention layers to skip")
    se.add_argument("--trials", type=int, default=40, help="completed trials wanted in total")
    se.add_argument("--objective", default="accepted-length",
                    choices=["accepted-length", "tokens-per-s"],
                    help="accepted-length (default: ranks sets like throughput at fixed k, "
                    "without timing noise) or tokens-per-s (the paper's)")
    se.add_argument("--storage", help="optuna storage URL (default sqlite:///OUT/study.sqlite3)")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--redundancy", type=Path,
                    help="redundancy.json from 'rad diagnose': adds its top-k as a warm start")

    cs = sub.add_parser("compare-sets", help="acceptance and speedup of skip sets side by side",
                        description="Measures the Bayesian set (--selection), the uniform "
                        "interleave, the profile's top-k (--redundancy) and --random seeded "
                        "random sets against plain greedy decoding in one run.")
    _add_spec_args(cs, "gsm8k-train:16", 64)
    cs.add_argument("--k", type=int, required=True)
    cs.add_argument("--selection", type=Path, help="selection.json from 'rad select'")
    cs.add_argument("--redundancy", type=Path, help="redundancy.json from 'rad diagnose'")
    cs.add_argument("--random", type=int, default=3, help="number of random sets")
    cs.add_argument("--seed", type=int, default=0)
    cs.add_argument("--repeats", type=int, default=3)


def _add_hybrid_parser(sub) -> None:
    from rad.hybrid import INITS

    h = sub.add_parser("hybrid", help="attention -> Mamba2 hybrids (RAD step 3)")
    hsub = h.add_subparsers(dest="hybrid_command", required=True, metavar="ACTION",
                            parser_class=_Parser)
    b = hsub.add_parser(
        "build", help="replace attention layers by Mamba2 mixers and save the hybrid",
        description="Turn the --layers attention sub-layers of --model into Mamba2 mixers sized "
        "from them (MLPs and norms kept) and write a hybrid folder (config.json, "
        "model.safetensors, tokenizer) that every 'rad' command loads with --model DIR. "
        "Inits: " + "; ".join(f"{k}: {v[1]}" for k, v in INITS.items()) + ".")
    _add_model_args(b)
    b.add_argument("--layers", type=_int_list, required=True,
                   help="comma-separated layer indices to replace (0-based)")
    b.add_argument("--init", required=True, help=f"one of {', '.join(INITS)}")
    b.add_argument("--seed", type=int, default=0, help="seed of the new parameters' init")
    b.add_argument("--out", type=Path, required=True, help="hybrid folder to create (must not "
                   "exist or be empty)")


def _add_distill_parsers(sub) -> None:

    sub.add_parser("methods", help="list the registered methods and their recipes")
    d = sub.add_parser(
        "distill", help="build a method's hybrid and distil it from a teacher (RAD step 4)",
        description="Picks the layers the method's recipe says (rad: --selection from 'rad "
        "select'; plain-distill: uniform; random-swap: seeded random; full-ssm: all), builds "
        "the hybrid with the recipe's init, and trains the recipe's parameters on KL to the "
        "teacher's top-k distributions (computed once, cached under $RAD_CACHE_DIR/targets). "
        "OUT becomes a hybrid folder ('rad generate --model OUT') with curve.jsonl (held-out "
        "KL every --eval-every steps) and distill.json. Re-running the same command resumes "
        "from OUT/train/checkpoint.pt.")
    d.add_argument("--method", required=True, help="see 'rad methods'")
    d.add_argument("--model", required=True, help="the student's base model (name or folder)")
    d.add_argument("--k", type=int, help="attention layers to replace (full-ssm: all)")
    d.add_argument("--seed", type=int, default=0, help="init, random layers and data order")
    d.add_argument("--steps", type=int, required=True, help="optimiser steps")
    d.add_argument("--out", type=Path, required=True, help="run folder (new, or to resume)")
    d.add_argument("--selection", type=Path, help="selection.json from 'rad select' (rad)")
    d.add_argument("--teacher", help="teacher model (default: --model, self-distillation); "
                   "must share the tokenizer")
    _add_train_args(d)

    c = sub.add_parser(
        "distill-compare", help="every method x seed at one budget, then the convergence report",
        description="Runs 'rad distill' for each --methods x --seeds cell under OUT/<method>-s"
        "<seed> (finished cells are skipped, unfinished ones resume), then writes "
        "distillation.md/.json/.png to --report-dir: held-out KL curves and the steps each "
        "method needs to reach plain-distill's final KL.")
    c.add_argument("--model", required=True)
    c.add_argument("--k", type=int, required=True, help="layers replaced (full-ssm: all)")
    c.add_argument("--seeds", type=_int_list, default=[0, 1])
    c.add_argument("--methods", type=_str_list,
                   default=["rad", "plain-distill", "random-swap", "full-ssm"])
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--out", type=Path, required=True, help="folder for the run folders")
    c.add_argument("--report-dir", type=Path, help="where the report goes (default OUT)")
    c.add_argument("--selection", type=Path, help="selection.json for rad-selected methods")
    c.add_argument("--teacher")
    _add_train_args(c)


def _add_train_args(d) -> None:
    from harness.distill_data import DataConfig
    from rad.train import TrainConfig

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
                   "(forward-kl|reverse-kl)")
    d.add_argument("--precision", default=t.precision, help="auto|fp32|bf16 autocast")
    d.add_argument("--seq-len", type=int, default=dd.seq_len)
    d.add_argument("--train-seqs", type=int, default=dd.n_train)
    d.add_argument("--heldout-seqs", type=int, default=dd.n_heldout)
    d.add_argument("--topk", type=int, default=dd.topk, help="teacher log-probs kept per token")


def _add_throughput_parser(bsub) -> None:
    t = bsub.add_parser(
        "throughput", help="prefill/decode tok/s, state bytes and peak memory per context/batch",
        description="Times prefill and greedy decode of --model over --contexts x --batch "
        "(warm-up, median of --repeats, min-max spread) and reports the inference-state bytes "
        "and peak memory. --with-hybrids adds the model's 50%% uniform-interleave hybrid and its "
        "full-SSM model (kqvo init; speed does not depend on the init), timed side by side.")
    t.add_argument("--model", required=True, help="registered name, HF folder or hybrid folder")
    t.add_argument("--dtype", default="fp32", help="fp32|bf16 (default fp32)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--contexts", type=_int_list, default=[512, 2048, 8192])
    t.add_argument("--batch", type=_int_list, default=[1, 8])
    t.add_argument("--new-tokens", type=int, default=16, help="decode steps per timed window")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--prefill-max-tokens", type=int, default=16384,
                   help="most tokens in one timed prefill (long contexts use fewer rows)")
    t.add_argument("--with-hybrids", action="store_true",
                   help="also time the 50%% hybrid and the full-SSM model built from --model")
    t.add_argument("--json", type=Path, help="write the records here")
    t.add_argument("--md", type=Path, help="write a markdown table here")


# -- commands ------------------------------------------------------------------------------
def _model_and_prompt(args):
    """Load --model and encode --prompt; validate --skip against the model."""
    from harness.teachers import load_model
    from rad.prompts import encode_prompts

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    lm = load_model(args.model, dtype=args.dtype)
    _check_skip(args.skip, lm.model.cfg.n_layers)
    try:
        ids, mask = encode_prompts(lm.tokenizer, [args.prompt], args.chat, lm.pad_token_id)
    except ValueError as e:
        raise UserError(str(e)) from None
    return lm, ids, mask


def cmd_generate(args) -> int:
    from rad.generate import greedy_generate

    lm, ids, mask = _model_and_prompt(args)
    out = greedy_generate(lm.model, ids, mask, args.max_new_tokens, lm.eos_token_ids,
                          skip=frozenset(args.skip), progress=True)
    print(lm.tokenizer.decode(out.tokens[0], skip_special_tokens=True))
    return 0


def _check_draft_args(args) -> None:
    if args.gamma < 1:
        raise UserError("--gamma must be >= 1")
    if args.stop_threshold is not None and not 0.0 <= args.stop_threshold <= 1.0:
        raise UserError("--stop-threshold must be in [0, 1]")


def cmd_speculate(args) -> int:
    from rad.speculative import self_speculative_generate

    _check_draft_args(args)
    lm, ids, _ = _model_and_prompt(args)
    res = self_speculative_generate(lm.model, ids, args.skip, args.max_new_tokens, args.gamma,
                                    lm.eos_token_ids, args.stop_threshold)
    print(lm.tokenizer.decode(res.tokens, skip_special_tokens=True))
    s = res.stats
    print(f"[speculate] skip={sorted(args.skip)} gamma={args.gamma} drafted={s.drafted} "
          f"accepted={s.accepted} acceptance={s.acceptance_rate:.3f} "
          f"mean_accepted_length={s.mean_accepted_length:.2f} verify_steps={s.verify_steps} "
          f"draft_s={s.draft_s:.2f} verify_s={s.verify_s:.2f} tok/s={s.tokens_per_s:.1f}")
    return 0


def _workload(args):
    from harness.selection_runs import load_workload
    from rad.redundancy import SpecSettings

    _check_draft_args(args)
    settings = SpecSettings(args.gamma, args.max_new_tokens, args.stop_threshold)
    return load_workload(args.model, args.prompts, settings, args.dtype)


def cmd_diagnose(args) -> int:
    from harness.cache import ensure_writable_dir
    from harness.prompt_sets import parse_spec
    from harness.selection_runs import run_diagnose

    parse_spec(args.prompts)  # bad input fails before the model loads
    ensure_writable_dir(args.out)
    path = run_diagnose(_workload(args), args.out)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def cmd_select(args) -> int:
    from harness.prompt_sets import parse_spec
    from harness.selection_runs import run_select

    parse_spec(args.prompts)
    if args.k < 1:
        raise UserError(f"--k must be >= 1; got {args.k}")
    path = run_select(_workload(args), args.k, args.trials, args.objective, args.seed,
                      args.out, args.storage, args.redundancy)
    result = json.loads(path.read_text())
    print(f"layers {result['layers']} score {result['score']:.3f} ({result['objective']}, "
          f"{result['trials']} trials); wrote {path}")
    return 0


def cmd_compare_sets(args) -> int:
    from harness.prompt_sets import parse_spec
    from harness.selection_runs import comparison_sets, read_json, run_compare

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


def _check_skip(skip: list[int], n_layers: int) -> None:
    bad = [i for i in skip if not 0 <= i < n_layers]
    if bad or len(set(skip)) != len(skip):
        raise UserError(f"--skip needs distinct layer indices in 0..{n_layers - 1}; got {skip}")


def cmd_models(args) -> int:
    from harness.teachers import TEACHERS
    for name, (description, _) in TEACHERS.items():
        print(f"{name:24s} {description}")
    return 0


def cmd_data(args) -> int:
    from harness import data
    if args.data_command == "fetch":
        for path in data.fetch(tuple(args.tasks)):
            print(f"wrote {path}")
        return 0
    _data_check()
    return 0


def _data_check() -> None:
    """Print rows per task/split; raise the first problem as a one-line error."""
    from harness import data
    rows = data.check()
    for task, split, count, _ in rows:
        print(f"{task:10s} {split:6s} {count if count is not None else '-':>6}")
    errors = [e for *_, e in rows if e]
    if errors:
        raise UserError(errors[0])


def cmd_hybrid(args) -> int:
    from harness.hybrids import build_hybrid_folder

    build_hybrid_folder(args.model, args.layers, args.init, args.out, args.seed, args.dtype)
    print(f"wrote {args.out}")
    return 0


def cmd_methods(args) -> int:
    from rad.recipes import all_recipes

    print(f"{'method':14s} {'selector':9s} {'init':9s} {'trains':9s} {'loss':11s} extras")
    for r in all_recipes().values():
        extras = ", ".join(f"{k}={v}" for k, v in (("ce_weight", r.ce_weight),
                                                     ("align_steps", r.align_steps)) if v)
        print(f"{r.name:14s} {r.selector:9s} {r.init or '-':9s} {r.trainable or '-':9s} "
              f"{r.loss:11s} {extras or '-'}")
        print(f"{'':14s} {r.description}")
    return 0


def _train_and_data_configs(args, method: str):
    from harness.distill_data import DataConfig
    from harness.teachers import parse_dtype
    from rad.kd import LOSSES
    from rad.recipes import get_recipe
    from rad.train import TrainConfig

    parse_dtype(args.dtype)
    if args.loss is not None and args.loss not in LOSSES:
        raise UserError(f"unknown --loss {args.loss!r}; choose one of {', '.join(LOSSES)}")
    try:
        recipe = get_recipe(method)
        train_cfg = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
            lr=args.lr, warmup_steps=args.warmup_steps, eval_every=args.eval_every,
            ckpt_every=args.ckpt_every, loss=args.loss or recipe.loss,
            ce_weight=recipe.ce_weight, precision=args.precision)
        data_cfg = DataConfig(seq_len=args.seq_len, n_train=args.train_seqs,
                              n_heldout=args.heldout_seqs, topk=args.topk)
    except KeyError as e:
        raise UserError(str(e).strip("'\"")) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    return train_cfg, data_cfg


def cmd_distill(args) -> int:
    from harness.distill_runs import DistillRequest, run_distill

    train_cfg, data_cfg = _train_and_data_configs(args, args.method)
    out = run_distill(DistillRequest(args.method, args.model, args.k, args.seed, args.out,
                                     train_cfg, data_cfg, args.teacher, args.selection,
                                     args.dtype))
    summary = json.loads((out / "distill.json").read_text())
    print(f"{summary['method']}: layers {summary['layers']}, held-out KL "
          f"{summary['heldout_kl_start']:.4f} -> {summary['heldout_kl_final']:.4f} in "
          f"{summary['steps']} steps; wrote {out}")
    return 0


def cmd_distill_compare(args) -> int:
    from harness import distill_compare
    from harness.distill_runs import DistillRequest
    from rad.recipes import get_recipe

    if not args.methods or not args.seeds:
        raise UserError("--methods and --seeds need at least one entry each")
    # every method and setting is checked before any run
    configs = {m: _train_and_data_configs(args, m) for m in args.methods}
    if distill_compare.REFERENCE not in args.methods:
        raise UserError(f"--methods must include {distill_compare.REFERENCE} (the reference)")
    report_dir = args.report_dir or args.out
    for name in ("distillation.json", "distillation.md", "distillation.png"):
        check_output_file(report_dir / name)
    train_cfg, data_cfg = configs[args.methods[0]]
    base = DistillRequest(args.methods[0], args.model, args.k, args.seeds[0], args.out,
                          train_cfg, data_cfg, args.teacher, args.selection, args.dtype)
    ks = {m: (None if get_recipe(m).selector == "all" else args.k) for m in args.methods}
    folders = distill_compare.run_cells(base, args.methods, args.seeds, ks)
    rep = distill_compare.report(folders)
    for path in distill_compare.write_report(rep, report_dir):
        print(f"wrote {path}")
    print(distill_compare.markdown(rep))
    return 0


def cmd_bench(args) -> int:
    if args.bench_command == "throughput":
        return _bench_throughput(args)
    from harness.bench import as_json, bench_runtime, measure_stream_gbs
    from harness.teachers import parse_dtype

    if not args.dtype:
        raise UserError("--dtype needs at least one of fp32, bf16")
    for d in args.dtype:
        parse_dtype(d)
    if not args.batch or min(args.batch) < 1 or args.new_tokens < 1 or args.repeats < 1:
        raise UserError("--batch, --new-tokens and --repeats must be positive")
    if args.json:
        check_output_file(args.json)
    records = bench_runtime(args.model, args.batch, args.dtype, args.new_tokens, args.repeats)
    result = as_json(records, measure_stream_gbs(), args.model)
    _print_bench_table(result)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


def _bench_throughput(args) -> int:
    from harness import throughput
    from harness.teachers import load_model

    if not args.contexts or not args.batch or min(args.contexts + args.batch) < 1:
        raise UserError("--contexts and --batch need positive integers")
    if min(args.new_tokens, args.repeats, args.prefill_max_tokens) < 1:
        raise UserError("--new-tokens, --repeats and --prefill-max-tokens must be >= 1")
    if args.device not in ("cpu", "cuda"):
        raise UserError(f"unknown --device {args.device!r}; use cpu or cuda")
    if args.device == "cuda" and not torch_cuda_available():
        raise UserError("--device cuda: no CUDA device is available here")
    for path in (args.json, args.md):
        if path:
            check_output_file(path)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.with_hybrids and set(lm.model.layer_kinds) != {"attention"}:
        raise UserError("--with-hybrids needs an all-attention model; "
                        f"{args.model} already has Mamba2 layers")
    models = (throughput.comparison_models(lm.model) if args.with_hybrids
              else [(args.model, lm.model)])
    records = throughput.bench_throughput(models, args.contexts, args.batch, args.new_tokens,
                                          args.repeats, args.prefill_max_tokens)
    settings = {k: getattr(args, k) for k in ("contexts", "batch", "new_tokens", "repeats",
                                              "prefill_max_tokens", "with_hybrids")}
    result = throughput.as_json(records, args.model, args.dtype, args.device, settings)
    table = throughput.markdown(result)
    print(table)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    if args.md:
        atomic_write_text(args.md, table)
    return 0


def torch_cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _print_bench_table(result: dict) -> None:
    print(f"stream bandwidth {result['stream_gbs']:.1f} GB/s, {result['threads']} threads")
    print(f"{'impl':5s} {'dtype':5s} {'batch':>5s} {'tok/s':>8s} {'vs hf':>6s} {'of limit':>8s}")
    hf = {(r["dtype"], r["batch"]): r["tok_s"] for r in result["records"] if r["impl"] == "hf"}
    for r in result["records"]:
        ratio = r["tok_s"] / hf[(r["dtype"], r["batch"])]
        frac = f"{r['fraction_of_limit']:.0%}" if r["fraction_of_limit"] is not None else "-"
        print(f"{r['impl']:5s} {r['dtype']:5s} {r['batch']:5d} {r['tok_s']:8.1f} "
              f"{ratio:6.2f} {frac:>8s}")


def cmd_reproduce(args) -> int:
    from harness.experiments import load_config
    from harness.humaneval import code_execution_allowed
    from harness.report import REPORT_FILES, write_report
    from harness.runner import Runner, preflight

    cfg = load_config(args.profile)
    out = args.out or Path("results") / cfg.profile
    allow = code_execution_allowed(args.allow_code_execution)
    preflight(cfg, out, allow)  # everything that can fail on input fails here, before writing
    for name in REPORT_FILES:
        check_output_file(out / name)
    t0 = time.time()
    print(f"rad reproduce --profile {cfg.profile}: {cfg.model}, methods "
          f"{', '.join(cfg.methods)}, seeds {cfg.seeds}, k={cfg.k}; run folder {out}")
    Runner(cfg, out, allow).run()
    for path in write_report(out):
        print(f"wrote {path}")
    print(f"rad reproduce: done in {time.time() - t0:.0f} s; see {out / 'LEADERBOARD.md'}")
    return 0


def cmd_report(args) -> int:
    from harness.report import write_report

    for path in write_report(args.run, args.out):
        print(f"wrote {path}")
    return 0


def cmd_gate(args) -> int:
    from harness.gate import run_gate

    return run_gate(args.baseline, args.current)


COMMANDS = {"generate": cmd_generate, "speculate": cmd_speculate, "diagnose": cmd_diagnose,
            "select": cmd_select, "compare-sets": cmd_compare_sets, "models": cmd_models,
            "data": cmd_data, "bench": cmd_bench, "hybrid": cmd_hybrid,
            "methods": cmd_methods, "distill": cmd_distill,
            "distill-compare": cmd_distill_compare, "reproduce": cmd_reproduce,
            "report": cmd_report, "gate": cmd_gate,
            "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"rad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
