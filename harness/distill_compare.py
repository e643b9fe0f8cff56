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

from harness.cache import atomic_write_text, check_output_file
from harness.distill_runs import SUMMARY_FILE, DistillRequest, run_distill
from harness.errors import UserError
from rad.recipes import get_recipe

REFERENCE = "plain-distill"  # the paper's "faster convergence" is measured against it


def run_cells(base: DistillRequest, methods: Sequence[str], seeds: Sequence[int],
              ks: dict[str, int | None]) -> dict[tuple[str, int], Path]:
    folders = {}
    for method in methods:
        for seed in seeds:
            out = Path(base.out) / f"{method}-s{seed}"
            recipe = get_recipe(method)
            req = replace(base, method=method, seed=seed, out=out, k=ks[method],
                          train=replace(base.train, loss=recipe.loss, ce_weight=recipe.ce_weight),
                          selection=base.selection if recipe.selector == "rad" else None)
            print(f"== {method} seed {seed} -> {out}")
            folders[method, seed] = run_distill(req)
    return folders


def _curve(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "curve.jsonl").read_text().splitlines()]


def first_reaching(curve: list[dict], target: float) -> dict | None:
    """The first evaluation at or below `target` (None if never)."""
    return next((c for c in curve if c["heldout_kl"] <= target), None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def report(folders: dict[tuple[str, int], Path], reference: str = REFERENCE) -> dict:
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
            "kl_start": _mean_std(starts), "kl_final": _mean_std(finals),
            "steps_to_target": [h["step"] if h else None for h in hits],
            "wall_s_to_target": [h["wall_s"] if h else None for h in hits],
            "steps_to_target_mean": (statistics.fmean(h["step"] for h in reached)
                                     if len(reached) == len(hits) else None),
            "train_wall_s": _mean_std([summaries[k]["train_wall_s"] for k in keys]),
        })
    any_summary = next(iter(summaries.values()))
    return {"reference": reference, "target_kl": target, "rows": rows,
            "steps": any_summary["steps"], "tokens_per_step": any_summary["tokens_per_step"],
            "settings": {k: v for k, v in any_summary["settings"].items()
                         if k not in ("method", "seed")},
            "curves": {f"{m}-s{s}": [{k: c[k] for k in ("step", "heldout_kl", "wall_s",
                                                        "train_loss")} for c in curve]
                       for (m, s), curve in curves.items()}}


def markdown(rep: dict) -> str:
    s = rep["settings"]
    lines = [
        "# Distillation: held-out KL convergence", "",
        f"Teacher `{s['teacher']}` (self-distillation when it is the student), student "
        f"`{s['model']}`, k = {s['k']}, {rep['steps']} optimiser steps of "
        f"{rep['tokens_per_step']} tokens each for every method (same data, order per seed). "
        f"Held-out KL = KL(teacher || student) over the teacher's top-{s['data']['topk']} "
        f"tokens + rest, on {s['data']['n_heldout']} held-out sequences of "
        f"{s['data']['seq_len']} tokens. Target = `{rep['reference']}`'s mean final KL "
        f"({rep['target_kl']:.4f}); steps to target = first evaluation (every "
        f"{s['train']['eval_every']} steps) at or below it.", "",
        "| method | seeds | KL at step 0 | final KL | steps to target (per seed) | "
        "train s to target | train wall s |",
        "|---|---|---:|---:|---|---|---:|"]
    for r in rep["rows"]:
        def fmt(ms):
            return f"{ms[0]:.4f} ± {ms[1]:.4f}"
        steps = ", ".join("not reached" if v is None else str(v) for v in r["steps_to_target"])
        walls = ", ".join("-" if v is None else f"{v:.0f}" for v in r["wall_s_to_target"])
        lines.append(f"| {r['method']} | {', '.join(map(str, r['seeds']))} | "
                     f"{fmt(r['kl_start'])} | {fmt(r['kl_final'])} | {steps} | {walls} | "
                     f"{r['train_wall_s'][0]:.0f} |")
    lines += ["", "Layers replaced per seed:", ""]
    lines += [f"- {r['method']}: " + "; ".join(f"seed {s_}: {v}" for s_, v in r["layers"].items())
              for r in rep["rows"]]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    from harness.report import plot_kl_curves
    plot_kl_curves(rep["curves"], path, (rep["target_kl"], f"{rep['reference']} final (target)"))


def write_report(rep: dict, out: Path) -> list[Path]:
    paths = [check_output_file(out / n) for n in ("distillation.json", "distillation.md",
                                                   "distillation.png")]
    atomic_write_text(paths[0], json.dumps(rep, indent=2))
    atomic_write_text(paths[1], markdown(rep))
    plot(rep, paths[2])
    return paths
