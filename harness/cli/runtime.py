"""`rad generate` and `rad speculate`: one prompt through the decode core."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from harness.cli.args import (
    add_compile_arg,
    add_draft_args,
    add_model_args,
    add_precision_arg,
    int_list,
)
from harness.common.errors import UserError
from harness.models import inference_dtype, load_model
from rad.runtime import decode, prompts
from rad.runtime.linear import int8_weight_only
from rad.runtime.precision import resolve_precision

DESCRIPTIONS = {
    "generate": "Greedy completion on the rad runtime. With --skip, the listed layers' "
    "attention is bypassed (the self-speculative draft).",
    "speculate": "The draft is the model with --skip layers' attention bypassed; the full model "
    "verifies. Prints the completion (identical to plain greedy) and the acceptance stats.",
}


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=DESCRIPTIONS[name])
    add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--skip", type=int_list, default=[],
                   help="comma-separated layer indices whose attention is skipped (the draft)")
    if name == "speculate":
        add_draft_args(p)
    p.add_argument("--int8-weights", action="store_true",
                   help="decode with weight-only int8 (per-channel, bf16 math; "
                   "rad.runtime.linear.int8_weight_only): fewer bytes per token on CPU, "
                   "~1.4x fp32 at batch 1 on the embedded teacher (README, Precision)")
    add_precision_arg(p)
    add_compile_arg(p)
    p.set_defaults(handler=cmd_generate if name == "generate" else cmd_speculate)


def check_draft_args(args: argparse.Namespace) -> None:
    if args.gamma < 1:
        raise UserError("--gamma must be >= 1")
    if args.stop_threshold is not None and not 0.0 <= args.stop_threshold <= 1.0:
        raise UserError("--stop-threshold must be in [0, 1]")


def _check_skip(skip: list[int], n_layers: int) -> None:
    bad = [i for i in skip if not 0 <= i < n_layers]
    if bad or len(set(skip)) != len(skip):
        raise UserError(f"--skip needs distinct layer indices in 0..{n_layers - 1}; got {skip}")


def _model_and_prompt(args):
    """Load --model and encode --prompt; validate --skip against the model."""
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    precision = resolve_precision(args.precision, "cpu")  # load_model's default device
    lm = load_model(args.model, dtype=inference_dtype(args.dtype, precision))
    _check_skip(args.skip, lm.model.cfg.n_layers)
    if args.int8_weights:
        lm = dataclasses.replace(lm, model=int8_weight_only(lm.model))
    try:
        ids, mask = prompts.encode_prompts(lm.tokenizer, [args.prompt], args.chat,
                                           lm.pad_token_id)
    except ValueError as e:
        raise UserError(str(e)) from None
    # stdout is the completion alone; what the precision resolved to goes beside it (after
    # every check: an error stays one line)
    print(f"rad: precision {precision.resolved} ({precision.reason})", file=sys.stderr)
    return lm, ids, mask


def cmd_generate(args) -> int:
    lm, ids, mask = _model_and_prompt(args)
    out = decode.generate(lm.model, ids, mask, args.max_new_tokens, lm.eos_token_ids,
                          skip=frozenset(args.skip), progress=True)
    print(lm.tokenizer.decode(out.tokens[0], skip_special_tokens=True))
    return 0


def cmd_speculate(args) -> int:
    check_draft_args(args)
    lm, ids, _ = _model_and_prompt(args)
    res = decode.speculative_generate(lm.model, ids, args.max_new_tokens, args.gamma,
                                      lm.eos_token_ids, skip=args.skip,
                                      stop_threshold=args.stop_threshold)
    print(lm.tokenizer.decode(res.tokens, skip_special_tokens=True))
    s = res.stats
    print(f"[speculate] skip={sorted(args.skip)} gamma={args.gamma} drafted={s.drafted} "
          f"accepted={s.accepted} acceptance={s.acceptance_rate:.3f} "
          f"mean_accepted_length={s.mean_accepted_length:.2f} verify_steps={s.verify_steps} "
          f"draft_s={s.draft_s:.2f} verify_s={s.verify_s:.2f} tok/s={s.tokens_per_s:.1f}")
    return 0
