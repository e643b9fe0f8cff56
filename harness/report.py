"""`rad report RUN`: results.json, LEADERBOARD.md, leaderboard.csv and the plots, from a run folder.

Everything is recomputed from the run folder (run.json, cells/*.json, the step folders the cells
name), so a report can be rebuilt at any time. Every file is written to a temporary sibling and
renamed into place: a crash mid-write leaves the previous file whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from harness.cache import atomic_write_text, check_output_file
from harness.distill_compare import REFERENCE, first_reaching
from harness.errors import UserError
from harness.experiments import SCHEMA
from harness.runner import CELLS_DIR, HEADLINE, RUN_FILE

REPORT_FILES = ("results.json", "LEADERBOARD.md", "leaderboard.csv", "pareto.png",
                "convergence.png", "redundancy.png")
TASK_NAMES = {"gsm8k": "GSM8K", "math500": "MATH-500", "humaneval": "HumanEval"}


@dataclass(frozen=True)
class Column:
    metric: str
    title: str
    higher_is_better: bool
    fmt: str


def columns(tasks: list[str]) -> list[Column]:
    return [*(Column(t, TASK_NAMES[t], True, "{:.3f}") for t in tasks),
            Column("heldout_kl", "held-out KL", False, "{:.4f}"),
            Column("decode_tok_s", "decode tok/s", True, "{:.1f}"),
            Column("speedup", "speedup vs teacher", True, "{:.2f}x"),
            Column("state_mib", "state MiB", False, "{:.1f}"),
            Column("train_wall_s", "train wall s", False, "{:.0f}")]


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


# -- collect --------------------------------------------------------------------------------------
def _read(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None


def collect(run: Path) -> dict:
    run = Path(run)
    info = _read(run / RUN_FILE, "run file (is this a 'rad reproduce' folder?)")
    cfg = info["config"]
    by_name = {p.stem: _read(p, "cell result") for p in (run / CELLS_DIR).glob("*.json")}
    order = [f"{m}-s{s}" for m in cfg["methods"] for s in cfg["seeds"]]
    cells = [by_name[n] for n in order if n in by_name]
    if not cells:
        raise UserError(f"{run} has no finished cells yet; run 'rad reproduce' first")
    for c in cells:
        c["metrics"]["state_mib"] = c["metrics"]["state_bytes"] / 2**20
    tasks = cfg["eval"]["tasks"]
    board = []
    for method in dict.fromkeys(c["method"] for c in cells):
        mine = [c for c in cells if c["method"] == method]
        metrics = {col.metric: _mean_std([c["metrics"][col.metric] for c in mine])
                   for col in columns(tasks)}
        paired = [c for c in cells if c["method"] != "teacher"]
        if method == "teacher" and paired:  # the base model timed beside every other cell
            metrics["decode_tok_s"] = _mean_std([c["metrics"]["base_decode_tok_s"]
                                                 for c in paired])
        board.append({"method": method, "seeds": [c["seed"] for c in mine],
                      "layers": {str(c["seed"]): c["layers"] for c in mine},
                      "metrics": metrics})
    # Step folders (large) are not committed: a committed run folder is re-reported from the
    # results.json it already holds, for every step whose key it recorded.
    previous = _previous(run)
    curves = {}
    for c in cells:
        if "distill" in c["steps"]:
            name = f"{c['method']}-s{c['seed']}"
            path = run / c["steps"]["distill"]["folder"] / "curve.jsonl"
            if path.exists():
                curves[name] = [{k: e[k] for k in ("step", "heldout_kl", "wall_s", "train_loss")}
                                for e in map(json.loads, path.read_text().splitlines())]
            else:
                curves[name] = _recorded(previous, c, "distill", path)["curves"][name]
    sel_cell = next((c for c in cells if "select" in c["steps"]), None)
    redundancy = selection = None
    if sel_cell:
        red_path = run / sel_cell["steps"]["diagnose"]["folder"] / "redundancy.json"
        sel_path = run / sel_cell["steps"]["select"]["folder"] / "selection.json"
        redundancy = (_read(red_path, "redundancy profile") if red_path.exists()
                      else _recorded(previous, sel_cell, "diagnose", red_path)["redundancy"])
        selection = (_read(sel_path, "selection") if sel_path.exists()
                     else _recorded(previous, sel_cell, "select", sel_path)["selection"])
    from harness.provenance import code_provenance
    result = {"schema": SCHEMA, "profile": info["profile"], "config": cfg,
              "config_hash": info["config_hash"],
              "code_versions": sorted({c["code_version"] for c in cells}),
              "complete": len(cells) == len(_planned(cfg)),
              "provenance": code_provenance(), "cells": cells, "leaderboard": board,
              "curves": curves, "redundancy": redundancy, "selection": selection}
    result["verdict"] = verdict(result)
    return result


def _previous(run: Path) -> dict:
    path = run / "results.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def _recorded(previous: dict, cell: dict, step: str, missing: Path) -> dict:
    """`previous` (an earlier results.json) if it recorded this cell's `step` with the same
    key, else a one-line error naming the missing file."""
    key = cell["steps"][step]["key"]
    for old in previous.get("cells", []):
        if (old["method"], old["seed"]) == (cell["method"], cell["seed"]) and \
                old["steps"].get(step, {}).get("key") == key:
            return previous
    raise UserError(f"{missing} is missing and no results.json beside it recorded that step; "
                    "re-run 'rad reproduce' into this folder to rebuild it")


def _planned(cfg: dict) -> list[str]:
    return [f"{m}-s{s}" for m in cfg["methods"]
            for s in (cfg["seeds"][:1] if m == "teacher" else cfg["seeds"])]


# -- verdict --------------------------------------------------------------------------------------
def _row(result: dict, method: str) -> dict | None:
    return next((r for r in result["leaderboard"] if r["method"] == method), None)


def compare(a: dict, b: dict, higher_is_better: bool, floor: float = 0.0) -> dict:
    """Is `a` better than `b`? margin > 0 means yes; `spread` is the pooled seed-to-seed std
    (at least `floor`, e.g. a binomial standard error). Reproduced: margin > 2 spreads."""
    margin = (a["mean"] - b["mean"]) * (1 if higher_is_better else -1)
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    spread = max(pooled, floor)
    if margin <= 0:
        status = "not reproduced"
    elif spread == 0:
        status = "reproduced (no spread measured)" if min(len(a["values"]),
                                                           len(b["values"])) < 2 else "reproduced"
    else:
        status = "reproduced" if margin > 2 * spread else "direction only (within 2 spreads)"
    return {"margin": margin, "spread": spread, "status": status}


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1.0 / n) / n) if n else 0.0


def verdict(result: dict) -> list[dict]:
    tasks = result["config"]["eval"]["tasks"]
    out = []
    rad = _row(result, "rad")
    if rad is None:
        return [{"claim": "all", "status": "not tested", "detail": "no rad row"}]
    m = rad["metrics"]

    def kl_claim(claim: str, other: str) -> None:
        row = _row(result, other)
        if row is None:
            out.append({"claim": claim, "status": "not tested", "detail": f"no {other} row"})
            return
        c = compare(m["heldout_kl"], row["metrics"]["heldout_kl"], False)
        out.append({"claim": claim, "status": c["status"], "metric": "held-out KL",
                    "rad": m["heldout_kl"]["mean"], other: row["metrics"]["heldout_kl"]["mean"],
                    **c, "detail": f"rad {m['heldout_kl']['mean']:.4f} vs {other} "
                    f"{row['metrics']['heldout_kl']['mean']:.4f} (lower is better): margin "
                    f"{c['margin']:.4f}, seed spread {c['spread']:.4f}"})

    for other in ("random-swap", "uniform-swap"):
        kl_claim(f"selection beats {other.split('-')[0]} layers (same init and training)", other)
    sel = result.get("selection")
    if sel and "uniform" in sel.get("warm_starts", {}):
        u = sel["warm_starts"]["uniform"]["score"]
        out.append({"claim": "selected draft beats the uniform draft (self-speculative "
                    f"{sel['objective']})", "status": "reproduced" if sel["score"] > u
                    else "not reproduced", "rad": sel["score"], "uniform": u,
                    "detail": f"{sel['score']:.3f} vs {u:.3f} on the selection prompts "
                    "(one measurement: no seed spread)"})
    kl_claim("RAD beats plain distillation at equal budget", REFERENCE)
    out.append(_convergence_claim(result))
    teacher = _row(result, "teacher")
    self_distill = result["config"].get("teacher") in (None, result["config"]["model"])
    if teacher is not None:
        n = min(c["metrics"]["eval_n"] for c in result["cells"])
        for t in tasks:
            a, b = m[t], teacher["metrics"][t]
            c = compare(a, b, True, floor=_binomial_se(b["mean"], n) * math.sqrt(2))
            out.append({"claim": ("self-distilled" if self_distill else "distilled")
                        + f" hybrid surpasses the base model on {TASK_NAMES[t]}",
                        "status": c["status"], **c,
                        "detail": f"rad {a['mean']:.3f} vs base {b['mean']:.3f} on {n} problems"
                        f" (spread includes the binomial standard error, {c['spread']:.3f})"})
    return out


def _convergence_claim(result: dict) -> dict:
    claim = "RAD converges faster than plain distillation"
    curves = result["curves"]
    ref = [v for k, v in curves.items() if k.rsplit("-s", 1)[0] == REFERENCE]
    mine = [v for k, v in curves.items() if k.rsplit("-s", 1)[0] == "rad"]
    if not ref or not mine:
        return {"claim": claim, "status": "not tested", "detail": "needs rad and plain-distill"}
    target = statistics.fmean(c[-1]["heldout_kl"] for c in ref)
    hits = [h["step"] if (h := first_reaching(c, target)) else None for c in mine]
    ref_hits = [h["step"] if (h := first_reaching(c, target)) else None for c in ref]
    total = ref[0][-1]["step"]
    if any(h is None for h in hits):
        return {"claim": claim, "status": "not reproduced", "target_kl": target,
                "rad_steps": hits, "detail": f"rad does not reach plain-distill's final KL "
                f"{target:.4f} within {total} steps in every seed ({hits})"}
    ref_steps = [h if h is not None else total for h in ref_hits]
    factor = statistics.fmean(ref_steps) / max(statistics.fmean(hits), 1)
    return {"claim": claim, "status": "reproduced" if max(hits) < min(ref_steps) else
            "direction only (seeds overlap)" if factor > 1 else "not reproduced",
            "target_kl": target, "rad_steps": hits, "reference_steps": ref_steps,
            "factor": factor, "detail": f"rad reaches plain-distill's mean final KL {target:.4f}"
            f" at steps {hits} (plain-distill: {ref_steps}); {factor:.1f}x fewer steps"}


# -- tables ---------------------------------------------------------------------------------------
def _best(board: list[dict], col: Column) -> float | None:
    means = [r["metrics"][col.metric]["mean"] for r in board if r["method"] != "teacher"]
    if not means:
        return None
    return max(means) if col.higher_is_better else min(means)


def _cell_text(stat: dict, col: Column, best: float | None, is_teacher: bool) -> str:
    text = col.fmt.format(stat["mean"])
    if len(stat["values"]) > 1:
        text += " ± " + col.fmt.format(stat["std"]).rstrip("x")
    if best is not None and not is_teacher and math.isclose(stat["mean"], best, rel_tol=1e-12,
                                                            abs_tol=1e-12):
        text = f"**{text}**"
    return text


def leaderboard_markdown(result: dict) -> str:
    cfg = result["config"]
    tasks = cfg["eval"]["tasks"]
    cols = columns(tasks)
    board = result["leaderboard"]
    d, e, b = cfg["distill"], cfg["eval"], cfg["bench"]
    lines = [
        f"# Leaderboard: profile `{result['profile']}`", "",
        f"{cfg['description'].strip()}", "",
        f"Model `{cfg['model']}`, teacher `{cfg['teacher'] or cfg['model']}`"
        f"{' (self-distillation)' if cfg['teacher'] in (None, cfg['model']) else ''}; "
        f"k = {cfg['k']} attention layers become Mamba2 (full-ssm: all); seeds "
        f"{', '.join(map(str, cfg['seeds']))}; {cfg['dtype']} on {cfg['device']}. Generated by "
        "`rad report` from the run folder; do not edit."
        + ("" if result["complete"] else " **Incomplete run: some cells are missing.**"), "",
        "| method | seeds | " + " | ".join(c.title for c in cols) + " |",
        "|---|---|" + "---:|" * len(cols)]
    best = {c.metric: _best(board, c) for c in cols}
    for r in board:
        t = r["method"] == "teacher"
        lines.append(f"| {r['method']}{' (reference)' if t else ''} | {len(r['seeds'])} | "
                     + " | ".join(_cell_text(r["metrics"][c.metric], c, best[c.metric], t)
                                  for c in cols) + " |")
    lines += [
        "", "## How to read it", "",
        "- Each cell is the mean ± sample std over seeds (training seed: init, data order and, "
        "for random-swap, the layers; RAD's Bayesian selection runs once). Bold: best method "
        "(the teacher row is the reference, not a contender).",
        f"- Accuracy: {', '.join(f'{TASK_NAMES[t]} `{HEADLINE[t]}`' for t in tasks)}, on "
        f"{e['limit']} problems per task ({'0-shot chat' if e['chat'] else 'few-shot'}, "
        f"greedy, at most {e['max_gen_toks']} new tokens): one problem is "
        f"{1 / e['limit']:.2f} of accuracy.",
        f"- Held-out KL: KL(teacher ‖ model) per token on {d['n_heldout']} held-out sequences "
        f"of {d['seq_len']} tokens after {d['steps']} optimiser steps of {d['batch_size']} x "
        f"{d['grad_accum']} sequences (the same budget for every method); the teacher's is 0.",
        f"- Decode tok/s: greedy decoding of {b['batch']} rows after a {b['context']}-token "
        f"context, median of {b['repeats']} windows of {b['new_tokens']} steps; speedup = the "
        "median per-window ratio to the base model timed in the same step, interleaved (the "
        "only timing the gate compares); the teacher row's tok/s is the mean ± std of those "
        "base-model timings over the other cells. State MiB: KV cache + SSM state for that "
        "batch and context. Train wall s: training time of the cell on this machine.",
        "", "## Verdict (per claim of the paper)", "",
        "| claim | status | evidence |", "|---|---|---|"]
    lines += [f"| {v['claim']} | {v['status']} | {v.get('detail', '')} |"
              for v in result["verdict"]]
    lines += [
        "", "Reproduced = in the claimed direction by more than two seed-to-seed standard "
        "deviations (pooled; for accuracy at least the binomial standard error); direction only "
        "= the right sign, inside that noise.", "",
        "## Plots", "",
        "![accuracy and held-out KL vs decode speedup](pareto.png)", "",
        "![held-out KL vs training steps](convergence.png)", ""]
    if result.get("redundancy"):
        lines += ["![per-layer redundancy, RAD's layers in red](redundancy.png)", ""]
    layers = [f"- {r['method']}: " + "; ".join(f"seed {s}: {v}" for s, v in r["layers"].items())
              for r in board if r["method"] != "teacher"]
    prov = result["provenance"]
    lines += ["## Layers replaced", "", *layers, "", "## Provenance", "",
              f"Config hash {result['config_hash']}, code version(s) "
              f"{', '.join(result['code_versions'])}, report from commit {prov['git_commit']}; "
              "per-cell commits, package versions, threads and step wall times are in "
              "results.json (`cells`)."]
    return "\n".join(lines) + "\n"


def leaderboard_csv(result: dict) -> str:
    cols = columns(result["config"]["eval"]["tasks"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "n_seeds", *(f"{c.metric}_{s}" for c in cols for s in ("mean", "std"))])
    for r in result["leaderboard"]:
        w.writerow([r["method"], len(r["seeds"]),
                    *(f"{r['metrics'][c.metric][s]:.6g}" for c in cols for s in ("mean", "std"))])
    return buf.getvalue()


# -- plots ----------------------------------------------------------------------------------------
def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def plot_pareto(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["config"]["eval"]["tasks"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, r in enumerate(result["leaderboard"]):
        m = r["metrics"]
        x, xerr = m["speedup"]["mean"], m["speedup"]["std"]
        acc = statistics.fmean(m[t]["mean"] for t in tasks)
        ax1.errorbar(x, acc, xerr=xerr, fmt="o", color=f"C{i}", label=r["method"], capsize=3)
        ax2.errorbar(x, m["heldout_kl"]["mean"], xerr=xerr, yerr=m["heldout_kl"]["std"],
                     fmt="o", color=f"C{i}", label=r["method"], capsize=3)
    for ax, key in ((ax1, "acc"), (ax2, "kl")):
        pts = sorted(((r["metrics"]["speedup"]["mean"],
                       statistics.fmean(r["metrics"][t]["mean"] for t in tasks) if key == "acc"
                       else r["metrics"]["heldout_kl"]["mean"]) for r in result["leaderboard"]),
                     reverse=True)
        front, best = [], None
        for x, y in pts:  # from the fastest down: keep points that improve quality
            if best is None or (y > best if key == "acc" else y < best):
                front.append((x, y))
                best = y
        ax.plot(*zip(*front, strict=True), "--", color="gray", linewidth=1, label="Pareto front")
        ax.set_xlabel("decode speedup vs teacher (same-step ratio)")
    ax1.set_ylabel(f"mean accuracy ({', '.join(TASK_NAMES[t] for t in tasks)})")
    ax2.set_ylabel("held-out KL(teacher || model), lower is better")
    ax1.set_title("accuracy vs throughput")
    ax2.set_title("distillation quality vs throughput")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_kl_curves(curves: dict[str, list[dict]], path: Path,
                   target: tuple[float, str] | None = None) -> None:
    """Held-out KL against optimiser steps, one line per `<method>-s<seed>` curve, one colour
    and legend entry per method; `target` = (KL, name) draws a reference line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors: dict[str, str] = {}
    for name, curve in curves.items():
        method = name.rsplit("-s", 1)[0]
        label = None if method in colors else method
        color = colors.setdefault(method, f"C{len(colors)}")
        ax.plot([c["step"] for c in curve], [c["heldout_kl"] for c in curve], color=color,
                alpha=0.85, label=label, marker="o", markersize=3)
    if target is not None:
        ax.axhline(target[0], color="gray", linestyle="--", linewidth=1, label=target[1])
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("held-out KL(teacher || student)")
    ax.set_yscale("log")
    ax.set_title("Distillation convergence (one line per seed)")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_convergence(result: dict, path: Path) -> None:
    plot_kl_curves(result["curves"], path)


def plot_redundancy(result: dict, path: Path) -> None:
    from rad.redundancy import plot_profile

    red, sel = result["redundancy"], result["selection"]
    tmp = path.with_name(f".{path.name}.tmp.png")
    plot_profile(red["layers"], tmp, f"{red['model']}: acceptance with one attention layer "
                 f"skipped; red: RAD's {len(sel['layers'])} layers", chosen=sel["layers"])
    os.replace(tmp, path)


# -- write ----------------------------------------------------------------------------------------
def write_report(run: Path, out: Path | None = None) -> list[Path]:
    out = Path(out or run)
    paths = {n: check_output_file(out / n) for n in REPORT_FILES}
    result = collect(run)
    atomic_write_text(paths["results.json"], json.dumps(result, indent=2))
    atomic_write_text(paths["LEADERBOARD.md"], leaderboard_markdown(result))
    atomic_write_text(paths["leaderboard.csv"], leaderboard_csv(result))
    plot_pareto(result, paths["pareto.png"])
    plot_convergence(result, paths["convergence.png"])
    written = [paths[n] for n in REPORT_FILES[:5]]
    if result["redundancy"]:
        plot_redundancy(result, paths["redundancy.png"])
        written.append(paths["redundancy.png"])
    return written
