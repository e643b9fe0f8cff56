"""The report's plots (PNG): accuracy and held-out KL against decode speedup with Pareto fronts,
held-out KL curves, and the per-layer redundancy profile. Each is drawn to a temporary sibling
and renamed into place."""

from __future__ import annotations

import os
import statistics
from collections.abc import Collection
from pathlib import Path


def _pyplot():
    """matplotlib, headless. Imported on first use: heavy (~1 s), and only plots need it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def plot_pareto(result: dict, path: Path) -> None:
    plt = _pyplot()

    tasks = result["tasks"]
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
    ax1.set_ylabel(f"mean accuracy ({', '.join(f['label'] for f in tasks.values())})")
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
    plt = _pyplot()

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


def plot_redundancy(result: dict, path: Path) -> None:
    """The profile with the first seed's RAD layers in red (each seed's are in the tables)."""
    red, sels = result["redundancy"], result.get("selections") or []
    chosen = sels[0]["layers"] if sels else []
    tmp = path.with_name(f".{path.name}.tmp.png")
    title = f"{red['model']}: acceptance with one attention layer skipped"
    if sels:
        title += f"; red: RAD's {len(chosen)} layers (seed {sels[0]['seed']})"
    plot_profile(red["layers"], tmp, title, chosen=chosen)
    os.replace(tmp, path)


def plot_profile(entries: list[dict], path, title: str, chosen: Collection[int] = ()) -> None:
    """Bar plot of acceptance per layer; `chosen` layers (a selection) drawn in another colour."""
    plt = _pyplot()

    layers = [e["layer"] for e in entries]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, len(layers) * 0.3), 5), sharex=True)
    colours = ["tab:red" if layer in set(chosen) else "tab:blue" for layer in layers]
    ax1.bar(layers, [e["acceptance_rate"] for e in entries], color=colours)
    ax1.set_ylabel("acceptance rate")
    ax1.set_ylim(0, 1)
    ax1.set_title(title, fontsize=9)
    ax2.bar(layers, [e["mean_accepted_length"] for e in entries], color=colours)
    ax2.set_ylabel("accepted / round")
    ax2.set_xlabel("attention layer skipped alone" + (" (red: selected)" if chosen else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sampler_curves(result: dict, path: Path) -> None:
    """Best-so-far objective against trials, one line per sampler x seed (a colour per
    sampler), with the reference sets (profile top-k, uniform) as horizontal lines."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.8))
    colours = {s: f"C{i}" for i, s in enumerate(result["samplers"])}
    for r in result["runs"]:
        curve = r["best_so_far"]
        ax.plot(range(1, len(curve) + 1), curve, color=colours[r["sampler"]], alpha=0.85,
                label=f"{r['sampler']} seed {r['seed']} ({r['distinct_sets_measured']} sets)")
    for i, (name, ref) in enumerate(result["reference_sets"].items()):
        ax.axhline(ref["score"], color="black", linestyle=("--", ":")[i % 2],
                   label=f"{name} ({ref['score']:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {result['objective']} so far")
    ax.set_title(f"{result['model']}: layer search, k = {result['k']} of {result['n_layers']}, "
                 f"{result['trials']} trials per run", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
