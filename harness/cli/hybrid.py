"""`rad hybrid build` (a model plus a layer list -> a hybrid folder) and `rad hybrid export`
(a hybrid folder -> a stock transformers architecture's folder)."""

from __future__ import annotations

from pathlib import Path

from harness.cli.args import Parser, add_model_args, int_list
from harness.experiment.hybrid_export import export_hybrid_folder
from harness.experiment.hybrid_folder import build_hybrid_folder
from rad.method.export import EXPORT_TARGETS
from rad.method.replace import INITS


def add_parser(sub, name: str, help_text: str) -> None:
    h = sub.add_parser(name, help=help_text)
    hsub = h.add_subparsers(dest="hybrid_command", required=True, metavar="ACTION",
                            parser_class=Parser)
    b = hsub.add_parser(
        "build", help="replace attention layers by Mamba2 mixers and save the hybrid",
        description="Turn the --layers attention sub-layers of --model into Mamba2 mixers sized "
        "from them (MLPs and norms kept) and write a hybrid folder (config.json, "
        "model.safetensors, tokenizer) that every 'rad' command loads with --model DIR. "
        "Inits: " + "; ".join(f"{k}: {v.description}" for k, v in INITS.items()) + ".")
    add_model_args(b)
    b.add_argument("--layers", type=int_list, required=True,
                   help="comma-separated layer indices to replace (0-based)")
    b.add_argument("--init", required=True, help=f"one of {', '.join(INITS.names())}")
    b.add_argument("--seed", type=int, default=0, help="seed of the new parameters' init")
    b.add_argument("--out", type=Path, required=True, help="hybrid folder to create (must not "
                   "exist or be empty)")
    b.set_defaults(handler=cmd_build)
    targets = ", ".join(f"{n} ({t.architecture})" for n, t in EXPORT_TARGETS.items())
    e = hsub.add_parser(
        "export", help="write a hybrid as a stock transformers architecture (e.g. Bamba)",
        description="Converts a hybrid folder (from 'rad hybrid build' or 'rad distill') into a "
        "standard transformers folder: config.json with the stock model_type, "
        "model.safetensors, tokenizer, generation config and a model card. "
        "AutoModelForCausalLM.from_pretrained loads it, and so does every 'rad' command "
        f"(--model OUT). Targets: {targets}.")
    e.add_argument("folder", type=Path, help="the hybrid folder to export")
    e.add_argument("--to", required=True, help=f"target architecture: {targets}")
    e.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    e.set_defaults(handler=cmd_export)


def cmd_build(args) -> int:
    build_hybrid_folder(args.model, args.layers, args.init, args.out, args.seed, args.dtype)
    print(f"wrote {args.out}")
    return 0


def cmd_export(args) -> int:
    out = export_hybrid_folder(args.folder, args.to, args.out)
    print(f"wrote {out}")
    return 0
