"""`rad report RUN`: results.json, LEADERBOARD.md, leaderboard.csv and the plots, from a run folder.

Everything is recomputed from the run folder (run.json, cells/*.json, the step folders the cells
name), so a report can be rebuilt at any time; the facts it needs about tasks and methods come
from run.json, which the runner writes from the registries. Every file is written to a
temporary sibling and renamed into place: a crash mid-write leaves the previous file whole.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from harness.common.errors import UserError
from harness.common.files import atomic_write_text, check_output_file, read_json
from harness.common.provenance import provenance
from harness.report.plots import plot_kl_curves, plot_pareto, plot_redundancy
from harness.report.schema import CELLS_DIR, RUN_FILE, SCHEMA, cell_name
from harness.report.stats import mean_std, suite
from harness.report.tables import columns, leaderboard_csv, leaderboard_markdown
from harness.report.verdict import verdict

REPORT_FILES = ("results.json", "LEADERBOARD.md", "leaderboard.csv", "pareto.png",
                "convergence.png", "redundancy.png")


# -- collect --------------------------------------------------------------------------------------
def collect(run: Path) -> dict:
    run = Path(run)
    info = read_json(run / RUN_FILE, "run file (is this a 'rad reproduce' folder?)")
    cfg = info["config"]
    missing = [k for k in ("cells", "tasks", "methods") if k not in info]
    if missing:
        raise UserError(f"{run / RUN_FILE} lacks {', '.join(missing)} (written by an older "
                        "rad-harness); re-run 'rad reproduce' into this folder to rewrite it")
    by_name = {p.stem: read_json(p, "cell result") for p in (run / CELLS_DIR).glob("*.json")}
    cells = [by_name[n] for n in info["cells"] if n in by_name]
    if not cells:
        raise UserError(f"{run} has no finished cells yet; run 'rad reproduce' first")
    old = next((n for n in info["cells"] if n in by_name and "items" not in by_name[n]), None)
    if old is not None:
        raise UserError(f"{run / CELLS_DIR / old}.json has no per-item records (written by an "
                        f"older rad-harness, before {SCHEMA}); re-run 'rad reproduce' into "
                        "this folder to rewrite it")
    tasks = info["tasks"]
    for c in cells:
        c["metrics"]["state_mib"] = c["metrics"]["state_bytes"] / 2**20
        if suite(tasks):
            c["metrics"]["likelihood_avg"] = statistics.fmean(c["metrics"][t]
                                                              for t in suite(tasks))
    reference = {m for m, facts in info["methods"].items() if facts["reference"]}
    board = []
    for method in dict.fromkeys(c["method"] for c in cells):
        mine = [c for c in cells if c["method"] == method]
        metrics = {col.metric: mean_std([c["metrics"][col.metric] for c in mine])
                   for col in columns(tasks)}
        paired = [c for c in cells if c["method"] not in reference]
        if method in reference and paired:  # the base model timed beside every other cell
            metrics["decode_tok_s"] = mean_std([c["metrics"]["base_decode_tok_s"]
                                                for c in paired])
        board.append({"method": method, "reference": method in reference,
                      "seeds": [c["seed"] for c in mine],
                      "layers": {str(c["seed"]): c["layers"] for c in mine},
                      "metrics": metrics})
    # Step folders (large) are not committed: a committed run folder is re-reported from the
    # results.json it already holds, for every step whose key it recorded.
    previous = _previous(run)
    curves = {}
    for c in cells:
        if "distill" in c["steps"]:
            name = cell_name(c["method"], c["seed"])
            path = run / c["steps"]["distill"]["folder"] / "curve.jsonl"
            if path.exists():
                curves[name] = [{k: e[k] for k in ("step", "heldout_kl", "wall_s", "train_loss")}
                                for e in map(json.loads, path.read_text().splitlines())]
            else:
                curves[name] = _recorded(previous, c, "distill", path, "curves")[name]
    redundancy = _step_record(run, cells, previous, "diagnose", "redundancy.json",
                              "redundancy")
    kl_profile = _step_record(run, cells, previous, "kl-profile", "kl_profile.json",
                              "kl_profile")
    selections = []  # one per seed: the search runs per seed
    for seed in sorted({c["seed"] for c in cells if "select" in c["steps"]}):
        cell = next(c for c in cells if c["seed"] == seed and "select" in c["steps"])
        path = run / cell["steps"]["select"]["folder"] / "selection.json"
        if path.exists():
            record = read_json(path, "selection")
        else:
            record = next(r for r in _recorded(previous, cell, "select", path, "selections")
                          if r["seed"] == seed)
        selections.append({**record, "seed": seed})
    result = {"schema": SCHEMA, "profile": info["profile"], "config": cfg,
              "eval_task_wall_s": _eval_task_walls(run, cells, tasks, previous),
              "config_hash": info["config_hash"], "tasks": tasks, "methods": info["methods"],
              "code_versions": sorted({c["code_version"] for c in cells}),
              "complete": len(cells) == len(info["cells"]),
              "provenance": provenance(), "cells": cells, "leaderboard": board,
              "curves": curves, "redundancy": redundancy, "selections": selections,
              "kl_profile": kl_profile}
    result["verdict"] = verdict(result)
    return result


def _eval_task_walls(run: Path, cells: list[dict], tasks: dict, previous: dict) -> dict:
    """Mean wall seconds per task over the evaluated models (from the eval step folders, or
    as an earlier results.json recorded them when the folders are gone)."""
    walls: dict[str, list[float]] = {t: [] for t in tasks}
    for c in cells:
        path = run / c["steps"]["eval"]["folder"] / "eval.json" if "eval" in c["steps"] else None
        if path is None or not path.exists():
            return previous.get("eval_task_wall_s") or {}
        entry = read_json(path, "eval result")["tasks"]
        for t in tasks:
            walls[t].append(entry[t]["wall_s"])
    return {t: statistics.fmean(w) for t, w in walls.items() if w}


def _step_record(run: Path, cells: list[dict], previous: dict, step: str, file: str,
                 key: str) -> dict | None:
    """The record of a once-per-run step (diagnose, kl-profile) from its folder, or from the
    results.json that recorded it when the folder is gone; None when no cell read it."""
    cell = next((c for c in cells if step in c["steps"]), None)
    if cell is None:
        return None
    path = run / cell["steps"][step]["folder"] / file
    return read_json(path, file) if path.exists() else _recorded(previous, cell, step, path, key)


def _previous(run: Path) -> dict:
    path = run / "results.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def _recorded(previous: dict, cell: dict, step: str, missing: Path, entry: str):
    """`previous[entry]` (an earlier results.json) if it recorded this cell's `step` with the
    same key, else a one-line error naming the missing file. The key hashes the step's inputs
    and the code version, so a match is the very record the step wrote."""
    key = cell["steps"][step]["key"]
    for old in previous.get("cells", []):
        if (old["method"], old["seed"]) == (cell["method"], cell["seed"]) and \
                old["steps"].get(step, {}).get("key") == key and entry in previous:
            return previous[entry]
    raise UserError(f"{missing} is missing and no results.json beside it recorded that step; "
                    "re-run 'rad reproduce' into this folder to rebuild it")


# -- write ----------------------------------------------------------------------------------------
def write_report(run: Path, out: Path | None = None) -> list[Path]:
    out = Path(out or run)
    paths = {n: check_output_file(out / n) for n in REPORT_FILES}
    result = collect(run)
    atomic_write_text(paths["results.json"], json.dumps(result, indent=2))
    atomic_write_text(paths["LEADERBOARD.md"], leaderboard_markdown(result))
    atomic_write_text(paths["leaderboard.csv"], leaderboard_csv(result))
    plot_pareto(result, paths["pareto.png"])
    plot_kl_curves(result["curves"], paths["convergence.png"])
    written = [paths[n] for n in REPORT_FILES[:5]]
    if result["redundancy"]:
        plot_redundancy(result, paths["redundancy.png"])
        written.append(paths["redundancy.png"])
    return written
