"""`rad reproduce`: a profile end to end, then the report."""

from __future__ import annotations

import time
from pathlib import Path

from harness.cli.args import add_compile_arg
from harness.common.files import check_output_file
from harness.experiment.config import load_config, profile_names
from harness.experiment.estimate import dry_run_lines
from harness.experiment.runner import Runner, preflight
from harness.report.run_report import REPORT_FILES, write_report
from harness.tasks.sandbox import code_execution_allowed
from rad.runtime.distributed import init_world


def add_parser(sub, name: str, help_text: str) -> None:
    rp = sub.add_parser(
        name, help=help_text,
        description="Runs a profile (harness/experiment/profiles/NAME.yaml, or any YAML config "
        "by path): RAD's diagnosis and Bayesian selection once, then per method x seed: build "
        "+ distil -> evaluate (the profile's tasks) -> decode throughput beside the base "
        "model. Each step is keyed by a hash of its inputs, so a re-run skips finished work and "
        "a killed run resumes. Writes OUT/results.json, LEADERBOARD.md, leaderboard.csv and "
        "plots (see 'rad report').")
    rp.add_argument("--profile", default="cpu",
                    help=f"a shipped profile ({', '.join(profile_names())}; smoke takes about "
                    "a minute, cpu ~1.5 h on 2 cores, paper needs GPUs) or a path to a .yaml "
                    "config (default cpu)")
    rp.add_argument("--out", type=Path,
                    help="run folder (default results/<profile>; large artefacts go to "
                    "OUT/steps, which git ignores)")
    rp.add_argument("--allow-code-execution", action="store_true",
                    help="allow HumanEval to execute model-written code and CRUXEval-I to run "
                    "its functions on model-chosen arguments (or RAD_ALLOW_CODE_EXECUTION=1); "
                    "needed when the profile evaluates either")
    rp.add_argument("--dry-run", action="store_true",
                    help="list every step with its estimated peak memory and time per GPU "
                    "(from the models' config.json files; needs neither a GPU nor the "
                    "weights) and exit")
    add_compile_arg(rp)
    rp.set_defaults(handler=cmd_reproduce)


def cmd_reproduce(args) -> int:
    cfg = load_config(args.profile)
    out = args.out or Path("results") / cfg.profile
    if args.dry_run:
        for line in dry_run_lines(cfg, out):
            print(line)
        return 0
    allow = code_execution_allowed(args.allow_code_execution)
    # Under torchrun the world starts first: it sets this rank's device, which the base model
    # then loads onto, once (distillation and evaluation shard over the ranks).
    world = init_world(cfg.device)
    base = preflight(cfg, out, allow)  # everything that can fail on input fails here
    for name in REPORT_FILES:
        check_output_file(out / name)
    t0 = time.time()
    if world.is_main:
        print(f"rad reproduce --profile {cfg.profile}: {cfg.model}, methods "
              f"{', '.join(cfg.methods)}, seeds {cfg.seeds}, k={cfg.k}; run folder {out}"
              + (f"; {world.size} ranks" if world.distributed else ""))
    Runner(cfg, out, allow, base).run()
    if not world.is_main:
        return 0
    for path in write_report(out):
        print(f"wrote {path}")
    print(f"rad reproduce: done in {time.time() - t0:.0f} s; see {out / 'LEADERBOARD.md'}")
    return 0
