"""`rad bench runtime` (our decode beside HF generate) and `rad bench throughput` (prefill and
decode tok/s, state bytes and peak memory per context x batch)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.cli.args import Parser, add_compile_arg, int_list, str_list
from harness.common.errors import UserError
from harness.common.files import atomic_write_text, check_output_file
from harness.experiment import bench_throughput
from harness.experiment.bench_runtime import as_json, bench_runtime, measure_stream_gbs
from harness.experiment.bench_stages import bench_stages, stages_table
from harness.models import load_model, parse_dtype
from harness.report.tables import bench_runtime_table, throughput_markdown
from rad.runtime.compile_mode import compile_mode, set_compile_mode
from rad.runtime.precision import PRECISIONS


def add_parser(sub, name: str, help_text: str) -> None:
    b = sub.add_parser(name, help=help_text)
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="WHAT",
                            parser_class=Parser)
    r = bsub.add_parser("runtime", help="greedy decode tok/s: rad runtime vs HF generate",
                        description="Median of --repeats timed runs after one warm-up, rad and "
                        "HF side by side on the same prompt and token count.")
    r.add_argument("--model", required=True)
    r.add_argument("--batch", type=int_list, default=[1, 8])
    r.add_argument("--new-tokens", type=int, default=128)
    r.add_argument("--dtype", type=str_list, default=["fp32", "bf16"])
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    r.add_argument("--json", type=Path, help="write the records here")
    add_compile_arg(r, bench=True)
    r.set_defaults(handler=cmd_bench_runtime)

    t = bsub.add_parser(
        "throughput", help="prefill/decode tok/s, state bytes and peak memory per context/batch",
        description="Times prefill and greedy decode of --model over --contexts x --batch "
        "(warm-up, median of --repeats, min-max spread) and reports the inference-state bytes "
        "and peak memory. --with-hybrids adds the model's 50%% uniform-interleave hybrid and its "
        "full-SSM model (kqvo init; speed does not depend on the init), timed side by side.")
    t.add_argument("--model", required=True, help="registered name, HF folder or hybrid folder")
    t.add_argument("--dtype", default="fp32", help="fp32|bf16 (default fp32)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--contexts", type=int_list, default=[512, 2048, 8192])
    t.add_argument("--batch", type=int_list, default=[1, 8])
    t.add_argument("--new-tokens", type=int, default=16, help="decode steps per timed window")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--prefill-max-tokens", type=int, default=16384,
                   help="most tokens in one timed prefill (long contexts use fewer rows)")
    t.add_argument("--with-hybrids", action="store_true",
                   help="also time the 50%% hybrid and the full-SSM model built from --model")
    t.add_argument("--json", type=Path, help="write the records here")
    t.add_argument("--md", type=Path, help="write a markdown table here")
    add_compile_arg(t, bench=True)
    t.set_defaults(handler=cmd_bench_throughput)

    g = bsub.add_parser(
        "stages", help="tok/s of every compute-bound stage per precision, against the limits",
        description="Times teacher targets, one SSM-only distillation step (k-layer hybrid), "
        "likelihood scoring and compiled greedy decode at batch 1 and 8, per --precision, side "
        "by side in one run (warm-up, median of --repeats), with the machine's GEMM peak and "
        "read bandwidth measured in the same run: tok/s, the ratio to fp32 and the fraction "
        "of the limit. Each stage runs as a real run does: bf16 targets, scoring and decode on a "
        "bf16 copy of the weights, the bf16 training step under autocast over fp32 masters; "
        "beside bf16, decode also runs the weight-only int8 option (rad generate "
        "--int8-weights). The JSON says what --precision auto resolves to here.")
    g.add_argument("--model", required=True, help="registered name or HF folder")
    g.add_argument("--precision", type=str_list, default=["fp32", "bf16"],
                   help="comma list of auto|fp32|bf16 (default fp32,bf16)")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--k", type=int, default=15, help="layers replaced in the distilled hybrid")
    g.add_argument("--json", type=Path, help="write the records here")
    add_compile_arg(g, bench=True)
    g.set_defaults(handler=cmd_bench_stages)


def cmd_bench_runtime(args) -> int:
    if not args.dtype:
        raise UserError("--dtype needs at least one of fp32, bf16")
    for d in args.dtype:
        parse_dtype(d)
    if not args.batch or min(args.batch) < 1 or args.new_tokens < 1 or args.repeats < 1:
        raise UserError("--batch, --new-tokens and --repeats must be positive")
    _check_device(args.device)
    if args.json:
        check_output_file(args.json)
    _steady_state_compile()
    records = bench_runtime(args.model, args.batch, args.dtype, args.new_tokens, args.repeats,
                            args.device)
    result = as_json(records, measure_stream_gbs(device=args.device), args.model)
    print(bench_runtime_table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


def cmd_bench_stages(args) -> int:
    bad = [p for p in args.precision if p not in PRECISIONS]
    if bad or not args.precision:
        raise UserError(f"--precision takes {', '.join(PRECISIONS)}; got {','.join(bad)}")
    if args.repeats < 1:
        raise UserError("--repeats must be >= 1")
    if args.json:
        check_output_file(args.json)
    _steady_state_compile()
    lm = load_model(args.model)  # fp32 master weights; each stage applies its precision
    if not 0 < args.k <= lm.model.cfg.n_layers:
        raise UserError(f"--k must be in 1..{lm.model.cfg.n_layers}")
    result = bench_stages(lm.model, lm.tokenizer.pad_token_id or 0, args.precision,
                          args.repeats, k=args.k)
    result["model"] = args.model
    print(stages_table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


def cmd_bench_throughput(args) -> int:
    if not args.contexts or not args.batch or min(args.contexts + args.batch) < 1:
        raise UserError("--contexts and --batch need positive integers")
    if min(args.new_tokens, args.repeats, args.prefill_max_tokens) < 1:
        raise UserError("--new-tokens, --repeats and --prefill-max-tokens must be >= 1")
    _check_device(args.device)
    for path in (args.json, args.md):
        if path:
            check_output_file(path)
    _steady_state_compile()
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.with_hybrids and set(lm.model.layer_kinds) != {"attention"}:
        raise UserError("--with-hybrids needs an all-attention model; "
                        f"{args.model} already has Mamba2 layers")
    models = (bench_throughput.comparison_models(lm.model) if args.with_hybrids
              else [(args.model, lm.model)])
    records = bench_throughput.bench_throughput(models, args.contexts, args.batch,
                                                args.new_tokens, args.repeats,
                                                args.prefill_max_tokens)
    settings = {k: getattr(args, k) for k in ("contexts", "batch", "new_tokens", "repeats",
                                              "prefill_max_tokens", "with_hybrids")}
    result = bench_throughput.as_json(records, args.model, args.dtype, args.device, settings)
    table = throughput_markdown(result)
    print(table)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    if args.md:
        atomic_write_text(args.md, table)
    return 0


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown --device {device!r}; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")


def _steady_state_compile() -> None:
    """A bench times steady state (compile time is reported apart), so `auto` means `on`."""
    if compile_mode() == "auto":
        set_compile_mode("on")
