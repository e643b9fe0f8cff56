"""Paired statistics in the verdict: the tests against textbook cases, and verdict
statuses that follow the corrected CIs."""

from __future__ import annotations

import copy
import random

import pytest
import scipy.stats

from harness.report import paired
from harness.report.paired import (
    compare_paired,
    holm,
    mcnemar_exact,
    paired_bootstrap,
    paired_values,
    sign_flip_p,
)
from harness.report.verdict import verdict


def test_mcnemar_exact_on_known_tables():
    # b = 3, c = 13 discordant pairs: p = 2 * P(X <= 3), X ~ Bin(16, 1/2) = 2 * 697 / 65536
    assert mcnemar_exact(3, 13) == pytest.approx(2 * 697 / 65536)
    assert mcnemar_exact(13, 3) == mcnemar_exact(3, 13)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    for b, c in ((1, 9), (7, 12), (40, 61), (0, 1)):
        assert mcnemar_exact(b, c) == pytest.approx(scipy.stats.binomtest(b, b + c).pvalue)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_sign_flip_exact():
    assert sign_flip_p([1.0] * 5) == pytest.approx(2 / 32)  # all-plus or all-minus
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([]) == 1.0


def _planted(n: int, p_a: float, p_b: float, seed: int) -> list[tuple[int, float, float]]:
    rng = random.Random(seed)
    return [(i, float(rng.random() < p_a), float(rng.random() < p_b)) for i in range(n)]


def test_bootstrap_ci_covers_a_planted_difference():
    """A right with p 0.6, B with 0.5, independently, on 600 items: the 95% CI holds the true
    0.1 in most of 40 data sets (nominal 95%) and excludes 0 in most."""
    covered = excludes_zero = 0
    for seed in range(40):
        boot = paired_bootstrap(_planted(600, 0.6, 0.5, seed), (0.95,), iters=1000, seed=seed)
        lo, hi = boot["cis"][0.95]
        covered += lo <= 0.1 <= hi
        excludes_zero += lo > 0
    assert covered >= 34 and excludes_zero >= 30


def test_bootstrap_resamples_items_not_pairs():
    """Two seeds on the same items agreeing exactly: the CI is that of the items, not of twice
    as many independent pairs."""
    one = _planted(300, 0.6, 0.5, 1)
    two = one + [(i, a, b) for i, a, b in one]
    ci1 = paired_bootstrap(one, (0.95,), seed=2)["cis"][0.95]
    ci2 = paired_bootstrap(two, (0.95,), seed=2)["cis"][0.95]
    assert ci2[1] - ci2[0] == pytest.approx(ci1[1] - ci1[0], rel=0.15)


def test_compare_paired_statuses_follow_the_ci():
    better = _planted(500, 0.7, 0.5, 3)
    assert compare_paired(better, 1, 0.99, True)["status"] == "reproduced"
    assert compare_paired(better, -1, 0.99, True)["status"] == "contradicted"
    same = [(i, float(i % 2), float(i % 2)) for i in range(100)]
    res = compare_paired(same, 1, 0.99, True)
    assert res["status"].startswith("not reproduced") and res["effect"] == 0
    assert res["p"] == 1.0 and res["mde"] > 0
    noisy = _planted(40, 0.55, 0.5, 4)
    res = compare_paired(noisy, 1, 0.99, True)
    lo, hi = res["ci"]
    assert lo < 0 < hi and res["status"].split(" (")[0] in ("direction only", "not reproduced")


def test_few_items_use_a_t_interval():
    """8 held-out rows, all favouring A by ~0.01: the bootstrap's percentile CI would be narrow;
    the t interval is what decides, and the MDE uses t too."""
    rows = [(i, 0.30 + 0.001 * i, 0.31 + 0.0015 * i) for i in range(8)]
    res = compare_paired(rows, -1, 0.99, False)
    assert res["ci_method"].startswith("Student t over 8")
    diffs = [a - b for _, a, b in rows]
    mean = sum(diffs) / 8
    se = scipy.stats.sem(diffs)
    half = scipy.stats.t.ppf(0.995, 7) * se
    assert res["ci"] == pytest.approx([mean - half, mean + half])
    assert res["status"] == "reproduced" and res["p"] == pytest.approx(2 / 256)


def test_pairing_by_seed_and_with_a_single_cell():
    def cell(method, seed, correct):
        return {"method": method, "seed": seed,
                "items": {"t": {"ids": [0, 1, 2], "correct": correct}}}
    rad = [cell("rad", 0, [1, 0, 1]), cell("rad", 1, [1, 1, 0])]
    other = [cell("x", 1, [0, 0, 0]), cell("x", 0, [1, 1, 1])]
    got = paired_values(rad, other, "t", "correct")
    assert [(a, b) for _, a, b in got] == [(1, 1), (0, 1), (1, 1), (1, 0), (1, 0), (0, 0)]
    teacher = [cell("teacher", 0, [0, 1, 0])]
    assert len(paired_values(rad, teacher, "t", "correct")) == 6


def _result(rad_correct: list[int], random_correct: list[int], kl_rad: float,
            kl_random: float) -> dict:
    n = len(rad_correct)
    tasks = {t: {"label": t.upper(), "headline": "acc", "higher_is_better": True}
             for t in ("piqa", "winogrande", "lambada_openai")}

    def cell(method, seed, correct, kl):
        items = {t: {"ids": list(range(n)), "correct": correct} for t in tasks}
        items["heldout_kl"] = {"ids": list(range(8)),
                               "values": [kl + 0.001 * i * (seed + 1) for i in range(8)]}
        return {"method": method, "seed": seed, "items": items, "metrics": {"eval_n": n}}

    cells = [cell("teacher", 0, random_correct, 0.0),
             *(cell("rad", s, rad_correct, kl_rad) for s in (0, 1)),
             *(cell("random-swap", s, random_correct, kl_random) for s in (0, 1))]
    board = [{"method": m, "reference": m == "teacher", "metrics": {}}
             for m in ("teacher", "rad", "random-swap")]
    return {"tasks": tasks, "cells": cells, "leaderboard": board, "curves": {},
            "config": {"model": "m", "teacher": None}, "selections": []}


def test_verdict_statuses_follow_the_cis():
    rng = random.Random(0)
    base = [int(rng.random() < 0.5) for _ in range(400)]
    better = [1 if b == 0 and rng.random() < 0.4 else b for b in base]
    res = {v["claim"]: v for v in verdict(_result(better, base, 0.30, 0.40))}
    suite = "selection beats random layers on the likelihood suite (PIQA, WINOGRANDE, " \
            "LAMBADA_OPENAI)"
    kl = "selection beats random layers (same init and training)"
    assert res[suite]["status"] == "reproduced" and res[kl]["status"] == "reproduced"
    m = sum(1 for v in res.values() if v.get("paired"))
    assert res[suite]["ci_level"] == pytest.approx(1 - 0.05 / m)
    for v in res.values():
        if v.get("paired"):
            lo, hi = v["ci"]
            want = ("reproduced" if (lo > 0 if v["direction"] > 0 else hi < 0) else
                    "contradicted" if (hi < 0 if v["direction"] > 0 else lo > 0) else "CI")
            assert v["status"].startswith(want) or (want == "CI" and "CI includes 0"
                                                    in v["status"])
    # the same data the other way round: rad worse on both counts
    res = {v["claim"]: v for v in verdict(_result(base, better, 0.40, 0.30))}
    assert res[suite]["status"] == "contradicted" and res[kl]["status"] == "contradicted"
    # no difference at all: undecided, and said so
    res = {v["claim"]: v for v in verdict(_result(base, base, 0.3, 0.3))}
    assert res[suite]["status"].startswith("not reproduced (CI includes 0)")


def test_more_claims_widen_each_ci():
    rng = random.Random(1)
    base = [int(rng.random() < 0.5) for _ in range(300)]
    better = [1 if b == 0 and rng.random() < 0.2 else b for b in base]
    result = _result(better, base, 0.3, 0.31)
    full = {v["claim"]: v for v in verdict(result)}
    fewer = copy.deepcopy(result)
    fewer["tasks"] = {"piqa": result["tasks"]["piqa"]}
    few = {v["claim"]: v for v in verdict(fewer)}
    claim = "self-distilled hybrid surpasses the base model on PIQA"
    assert few[claim]["ci_level"] < full[claim]["ci_level"]
    width = lambda v: v["ci"][1] - v["ci"][0]  # noqa: E731
    assert width(few[claim]) < width(full[claim])


def test_a_claim_without_items_on_both_sides_is_not_tested():
    """Every claim of a comparison is paired; one that lacks the other side's items says so
    instead of falling back to seed-level means."""
    result = _result([1, 0, 1], [0, 0, 1], 0.3, 0.4)
    result["cells"] = [c for c in result["cells"] if c["method"] != "random-swap"]
    result["leaderboard"] = [r for r in result["leaderboard"] if r["method"] != "random-swap"]
    out = {v["claim"]: v for v in verdict(result)}
    kl = out["selection beats random layers (same init and training)"]
    assert kl["status"] == "not tested" and "no random-swap row" in kl["detail"]
    assert "paired" not in kl and "margin" not in kl
    assert out["self-distilled hybrid surpasses the base model on PIQA"]["paired"]


def test_min_bootstrap_clusters_is_where_t_takes_over():
    rows = _planted(paired.MIN_BOOTSTRAP_CLUSTERS, 0.6, 0.4, 5)
    assert compare_paired(rows, 1, 0.95, True)["ci_method"].startswith("paired bootstrap")
    assert compare_paired(rows[:-1], 1, 0.95, True)["ci_method"].startswith("Student t")
