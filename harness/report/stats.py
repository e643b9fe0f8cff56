"""The arithmetic behind tables and verdicts: seed statistics, the margin-vs-spread comparison,
and when a distillation curve first reaches a target."""

from __future__ import annotations

import math
import statistics

CONVERGENCE_REFERENCE = "plain-distill"  # the paper's "faster convergence" is measured against it
# The zero-shot likelihood suite whose average hybrid-distillation papers report (MambaInLlama,
# LoLCATs, Llamba): a leaderboard column and a pooled verdict claim when a run has all three.
LIKELIHOOD_SUITE = ("piqa", "winogrande", "lambada_openai")


def suite(tasks: dict) -> list[str]:
    """The likelihood suite's tasks if this run evaluated all of them, else none."""
    return list(LIKELIHOOD_SUITE) if all(t in tasks for t in LIKELIHOOD_SUITE) else []


def mean_std(values: list[float]) -> dict:
    """Mean and sample std over seeds (std 0 for one value), with the values themselves."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


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


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1.0 / n) / n) if n else 0.0


def first_reaching(curve: list[dict], target: float) -> dict | None:
    """The first evaluation at or below `target` held-out KL (None if never)."""
    return next((c for c in curve if c["heldout_kl"] <= target), None)


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (Pearson's r of the tie-averaged ranks); nan if either side
    is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman needs two equally long lists of at least 2 values")
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")
