"""`rad distill-compare`: every method x seed at one equal budget, then the convergence report.

Each cell is an ordinary `rad distill` run folder under OUT/<method>-s<seed> (resumable, and
skipped once finished), so the comparison costs one teacher pass (cached targets) plus training.
The report reads the run folders: held-out KL curves, the step (and training wall time) at which
each method first reaches the reference method's final KL, and a PNG of the curves.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from harness.common.errors import UserError
from harness.common.files import atomic_write_text, check_output_file
from harness.experiment.distill import SUMMARY_FILE, DistillRequest, run_distill
from harness.report.plots import plot_kl_curves
from harness.report.schema import cell_name
from harness.report.stats import CONVERGENCE_REFERENCE, first_reaching, mean_std
from harness.report.tables import distillation_markdown
from rad.method.distill.loop import TrainConfig
from rad.method.recipes import get_recipe


def run_cells(base: DistillRequest, methods: Sequence[str], seeds: Sequence[int],
              ks: dict[str, int | None],
              trains: dict[str, TrainConfig]) -> dict[tuple[str, int], Path]:
    """Each method x seed as a `rad distill` run; `trains`: each method's loop config (one
    budget; the loss and CE weight are the method's, from `distill_configs`)."""
    other = [m for m in methods if get_recipe(m).trains
             and get_recipe(m).layer_selector.reads not in (None, "selection")]
    if other:
        raise UserError(f"distill-compare passes one --selection (RAD's search) to the cells; "
                        f"{', '.join(other)} read other records: run them with 'rad distill "
                        "--selection FILE' or in a profile ('rad reproduce')")
    folders = {}
    for method in methods:
        for seed in seeds:
            out = Path(base.out) / cell_name(method, seed)
            recipe = get_recipe(method)
            req = replace(base, method=method, seed=seed, out=out, k=ks[method],
                          train=trains[method],
                          selection=base.selection if recipe.layer_selector.reads
                          else None)
            print(f"== {method} seed {seed} -> {out}")
            folders[method, seed] = run_distill(req)
    return folders


def _curve(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "curve.jsonl").read_text().splitlines()]


def _ms(values: list[float]) -> tuple[float, float]:
    stat = mean_std(values)
    return stat["mean"], stat["std"]


def report(folders: dict[tuple[str, int], Path],
           reference: str = CONVERGENCE_REFERENCE) -> dict:
    methods = list(dict.fromkeys(m for m, _ in folders))
    curves = {key: _curve(f) for key, f in folders.items()}
    summaries = {key: json.loads((f / SUMMARY_FILE).read_text()) for key, f in folders.items()}
    if reference not in methods:
        raise UserError(f"the report needs the reference method {reference!r}")
    ref_finals = [curves[key][-1]["heldout_kl"] for key in curves if key[0] == reference]
    target = statistics.fmean(ref_finals)
    rows = []
    for method in methods:
        keys = [key for key in curves if key[0] == method]
        starts = [curves[k][0]["heldout_kl"] for k in keys]
        finals = [curves[k][-1]["heldout_kl"] for k in keys]
        hits = [first_reaching(curves[k], target) for k in keys]
        reached = [h for h in hits if h is not None]
        rows.append({
            "method": method, "seeds": [k[1] for k in keys],
            "layers": {str(k[1]): summaries[k]["layers"] for k in keys},
            "kl_start": _ms(starts), "kl_final": _ms(finals),
            "steps_to_target": [h["step"] if h else None for h in hits],
            "wall_s_to_target": [h["wall_s"] if h else None for h in hits],
            "steps_to_target_mean": (statistics.fmean(h["step"] for h in reached)
                                     if len(reached) == len(hits) else None),
            "train_wall_s": _ms([summaries[k]["train_wall_s"] for k in keys]),
        })
    any_summary = next(iter(summaries.values()))
    return {"reference": reference, "target_kl": target, "rows": rows,
            "steps": any_summary["steps"], "tokens_per_step": any_summary["tokens_per_step"],
            "settings": {k: v for k, v in any_summary["settings"].items()
                         if k not in ("method", "seed")},
            "curves": {cell_name(m, s): [{k: c[k] for k in ("step", "heldout_kl", "wall_s",
                                                        "train_loss")} for c in curve]
                       for (m, s), curve in curves.items()}}


def write_report(rep: dict, out: Path) -> list[Path]:
    paths = [check_output_file(out / n) for n in ("distillation.json", "distillation.md",
                                                   "distillation.png")]
    atomic_write_text(paths[0], json.dumps(rep, indent=2))
    atomic_write_text(paths[1], distillation_markdown(rep))
    plot_kl_curves(rep["curves"], paths[2],
                   (rep["target_kl"], f"{rep['reference']} final (target)"))
    return paths
