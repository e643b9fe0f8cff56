"""Paired statistics for the verdict: methods are evaluated on the same problems (and the same
held-out rows), so they are compared problem by problem, not mean against mean.

- accuracy: McNemar's exact test on the discordant pairs (pooled over seeds), and a paired
  bootstrap CI of the accuracy difference that resamples *problems* (all of a problem's seed
  pairs move together, so the CI does not pretend two seeds on one problem are two problems);
- held-out KL: the same bootstrap over held-out rows, and an exact sign-flip (permutation)
  test on the per-row mean differences;
- every comparison: the minimum detectable effect at its n (80% power, at the corrected level);
- several claims at once: Bonferroni. With m paired claims each CI is a (1 - 0.05/m) interval,
  and "reproduced" means that interval excludes zero in the claimed direction; p-values are
  also given Holm-adjusted.

Python and numpy only (the report and the gate stay torch-free).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from itertools import product

import numpy as np
import scipy.stats

ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_ITERS = 4000
MIN_BOOTSTRAP_CLUSTERS = 30  # below: a Student-t interval (the percentile bootstrap is too
# narrow on few clusters: with 8 held-out rows it can exclude 0 where no test could)
EXACT_SIGN_FLIP_MAX = 16  # clusters: up to 2^16 sign patterns enumerated, beyond that sampled
_NORMAL = statistics.NormalDist()


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b pairs right only under A, c right only under B;
    under H0 each discordant pair is a fair coin, p = P(|X - n/2| >= |b - n/2|), X ~ Bin(n, 1/2)."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_bootstrap(pairs: Sequence[tuple[object, float, float]],
                     levels: Sequence[float] = (0.95,), iters: int = BOOTSTRAP_ITERS,
                     seed: int = 0) -> dict:
    """pairs: (cluster id, value under A, value under B); the statistic is mean(A - B) over all
    pairs. Clusters (problems, rows) are resampled with replacement. Returns the effect, the
    percentile CI at each of `levels` (same draws) and the bootstrap standard error."""
    by_cluster: dict[object, list[float]] = defaultdict(list)
    for cluster, a, b in pairs:
        by_cluster[cluster].append(a - b)
    if not by_cluster:
        raise ValueError("no pairs to compare")
    sums = np.array([sum(d) for d in by_cluster.values()])
    counts = np.array([len(d) for d in by_cluster.values()], dtype=float)
    pick = np.random.default_rng(seed).integers(0, len(sums), size=(iters, len(sums)))
    draws = np.sort(sums[pick].sum(1) / counts[pick].sum(1))
    cis = {}
    for level in levels:
        tail = (1 - level) / 2
        cis[level] = [float(draws[max(0, math.floor(tail * iters))]),
                      float(draws[min(iters - 1, math.ceil((1 - tail) * iters) - 1)])]
    return {"effect": float(sums.sum() / counts.sum()), "cis": cis, "se": float(draws.std()),
            "n_clusters": len(sums), "n_pairs": int(counts.sum())}


def t_interval(cluster_diffs: Sequence[float], levels: Sequence[float]) -> dict:
    """Student-t CIs of the mean of per-cluster differences, one per level."""
    n = len(cluster_diffs)
    mean = statistics.fmean(cluster_diffs)
    se = statistics.stdev(cluster_diffs) / math.sqrt(n) if n > 1 else float("inf")
    cis = {}
    for level in levels:
        half = scipy.stats.t.ppf(1 - (1 - level) / 2, n - 1) * se if n > 1 else float("inf")
        cis[level] = [mean - half, mean + half]
    return {"effect": mean, "cis": cis, "se": se}


def sign_flip_p(diffs: Sequence[float], samples: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of mean(diffs) = 0 for paired differences (one per
    cluster): every sign pattern (exact up to EXACT_SIGN_FLIP_MAX clusters, else sampled)."""
    n = len(diffs)
    if n == 0:
        return 1.0
    observed = abs(sum(diffs)) - 1e-12 * max(1.0, sum(map(abs, diffs)))
    if n <= EXACT_SIGN_FLIP_MAX:
        patterns = product((1, -1), repeat=n)
        total = 2 ** n
    else:
        rng = random.Random(seed)
        patterns = ([rng.choice((1, -1)) for _ in range(n)] for _ in range(samples))
        total = samples
    hits = sum(abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) >= observed
               for signs in patterns)
    return hits / total


def mde(se: float, level: float, df: int | None = None, floor: float = 0.0) -> float:
    """Minimum detectable effect at `level` with 80% power: (q_{1-alpha/2} + q_power)
    standard errors, q the normal quantile (t with `df` degrees of freedom when given).
    `floor`: the smallest non-zero effect the data can show (accuracy: one discordant pair),
    so a comparison without disagreements still has an MDE."""
    alpha = 1 - level
    dist = scipy.stats.t(df) if df else scipy.stats.norm()
    return float((dist.ppf(1 - alpha / 2) + dist.ppf(POWER)) * max(se, floor))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def pair_cells(mine: list[dict], other: list[dict]) -> list[tuple[dict, dict]]:
    """Which cells face each other: the same seed where both methods ran it; a method with one
    cell (the seed-independent teacher, a one-seed method) faces every cell of the other."""
    if len(other) == 1:
        return [(c, other[0]) for c in mine]
    if len(mine) == 1:
        return [(mine[0], c) for c in other]
    by_seed = {c["seed"]: c for c in other}
    return [(c, by_seed[c["seed"]]) for c in mine if c["seed"] in by_seed]


def paired_values(mine: list[dict], other: list[dict], key: str,
                  field: str) -> list[tuple[object, float, float]]:
    """(cluster, mine, other) for every item both cells of a pair hold; key: the items entry
    (a task, or "heldout_kl"), field: "correct" or "values"."""
    out = []
    for a, b in pair_cells(mine, other):
        ia, ib = a.get("items", {}).get(key), b.get("items", {}).get(key)
        if not ia or not ib:
            continue
        theirs = dict(zip(map(str, ib["ids"]), ib[field], strict=True))
        out += [(f"{key}:{i}", float(v), float(theirs[str(i)]))
                for i, v in zip(ia["ids"], ia[field], strict=True) if str(i) in theirs]
    return out


def compare_paired(pairs: list[tuple[object, float, float]], direction: int, level: float,
                   binary: bool) -> dict:
    """One claim's numbers: effect (mine - other), the CI at `level` and at 95%, the p-value
    (McNemar for 0/1 outcomes, sign-flip over clusters otherwise), the MDE, and the status.
    direction: +1 if the claim says mine is higher, -1 lower."""
    boot = paired_bootstrap(pairs, (level, 0.95))
    by_cluster: dict[object, list[float]] = defaultdict(list)
    for cluster, x, y in pairs:
        by_cluster[cluster].append(x - y)
    method = "paired bootstrap over items"
    if len(by_cluster) < MIN_BOOTSTRAP_CLUSTERS:
        boot.update(t_interval([statistics.fmean(d) for d in by_cluster.values()],
                               (level, 0.95)))
        method = f"Student t over {len(by_cluster)} items"
    if binary:
        b = sum(1 for _, x, y in pairs if x > y)
        c = sum(1 for _, x, y in pairs if y > x)
        p, test = mcnemar_exact(b, c), f"McNemar exact (b={b}, c={c})"
    else:
        p = sign_flip_p([statistics.fmean(d) for d in by_cluster.values()])
        test = f"sign-flip over {len(by_cluster)} rows"
    lo, hi = boot["cis"][level]
    if (lo > 0 and direction > 0) or (hi < 0 and direction < 0):
        status = "reproduced"
    elif (hi < 0 and direction > 0) or (lo > 0 and direction < 0):
        status = "contradicted"
    elif boot["effect"] * direction > 0:
        status = "direction only (CI includes 0)"
    else:
        status = "not reproduced (CI includes 0)"
    return {"effect": boot["effect"], "ci": boot["cis"][level], "ci_level": level,
            "ci95": boot["cis"][0.95], "ci_method": method,
            "p": p, "test": test,
            "mde": mde(boot["se"], level, len(by_cluster) - 1 if method.startswith("Student")
                       else None, 1 / boot["n_pairs"] if binary else 0.0),
            "n_items": boot["n_clusters"], "n_pairs": boot["n_pairs"], "status": status}
