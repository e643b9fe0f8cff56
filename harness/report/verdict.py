"""The verdict: one line per claim of the paper, each with its status. Claims name the methods
they are about; everything else comes from the results JSON.

Claims measured on the same items by both sides (held-out KL per row, accuracy per problem)
are tested paired (`harness.report.paired`): effect, 95% and Bonferroni-corrected CIs, p-value,
MDE. The search's own objective and the convergence speed have no per-item measure and keep
their seed-level comparisons."""

from __future__ import annotations

import statistics

from harness.report.paired import ALPHA, compare_paired, holm, paired_values
from harness.report.schema import method_of
from harness.report.stats import (
    CONVERGENCE_REFERENCE,
    compare,
    first_reaching,
    mean_std,
    suite,
)

SELECTION_BASELINES = (("random-swap", "random layers"), ("uniform-swap", "uniform layers"),
                       ("profile-top-k", "the profile's top-k layers"),
                       ("kl-guided", "KL-guided selection"))


def _row(result: dict, method: str) -> dict | None:
    return next((r for r in result["leaderboard"] if r["method"] == method), None)


def verdict(result: dict) -> list[dict]:
    if _row(result, "rad") is None:
        return [{"claim": "all", "status": "not tested", "detail": "no rad row"}]
    claims = _paired_claims(result)
    return [*(c for c in claims if c["kind"] == "kl"),
            *_search_claims(result.get("selections") or []), _convergence_claim(result),
            *(c for c in claims if c["kind"] != "kl")]


def _paired_claims(result: dict) -> list[dict]:
    """Every claim measured on the same items by both sides, tested paired; the CIs are
    Bonferroni-corrected for the number of such claims, the p-values Holm-adjusted."""
    tasks = result["tasks"]
    self_distill = result["config"].get("teacher") in (None, result["config"]["model"])
    hybrid = "self-distilled" if self_distill else "distilled"
    specs = []  # (kind, claim, other method, item keys, direction, binary, metric label)
    for other, name in SELECTION_BASELINES:
        specs.append(("kl", f"selection beats {name} (same init and training)", other,
                      ["heldout_kl"], -1, False, "held-out KL"))
    specs.append(("kl", "RAD beats plain distillation at equal budget", CONVERGENCE_REFERENCE,
                  ["heldout_kl"], -1, False, "held-out KL"))
    teacher = next((r["method"] for r in result["leaderboard"] if r["reference"]), None)
    likelihood = suite(tasks)
    if likelihood:
        label = "likelihood suite (" + ", ".join(tasks[t]["label"] for t in likelihood) + ")"
        for other, name in (*SELECTION_BASELINES,
                            (CONVERGENCE_REFERENCE, "plain distillation")):
            claim = (f"selection beats {name} on the {label}" if other != CONVERGENCE_REFERENCE
                     else f"RAD beats plain distillation on the {label}")
            specs.append(("accuracy", claim, other, likelihood, 1, True, "accuracy"))
    if teacher is not None:
        for t in tasks:
            specs.append(("accuracy", f"{hybrid} hybrid surpasses the base model on "
                          f"{tasks[t]['label']}", teacher, [t],
                          1 if tasks[t]["higher_is_better"] else -1, True,
                          tasks[t]["headline"]))
        if likelihood:
            specs.append(("accuracy", f"{hybrid} hybrid surpasses the base model on the "
                          f"{label}", teacher, likelihood, 1, True, "accuracy"))
    mine = [c for c in result["cells"] if c["method"] == "rad"]
    pairs = {}
    out = []
    for kind, claim, other, keys, direction, binary, metric in specs:
        theirs = [c for c in result["cells"] if c["method"] == other]
        field = "correct" if binary else "values"
        pairs[claim] = [p for k in keys for p in paired_values(mine, theirs, k, field)]
        out.append({"claim": claim, "kind": kind, "metric": metric, "other": other,
                    "direction": direction, "binary": binary})
    tested = [c for c in out if len({k for k, _, _ in pairs[c["claim"]]}) >= 2]
    level = 1 - ALPHA / max(len(tested), 1)
    for c in out:
        if c not in tested:
            c.update(status="not tested", detail=f"fewer than 2 items with records for both "
                     f"rad and {c['other']} (no {c['other']} row, or too few items evaluated)")
            continue
        c.update(paired=True, **compare_paired(pairs[c["claim"]], c["direction"], level,
                                               c["binary"]))
    for c, p in zip(tested, holm([c["p"] for c in tested]), strict=True):
        c["p_holm"] = p
        c["detail"] = _detail(c, len(tested))
    return out


def _detail(c: dict, m: int) -> str:
    better = "higher" if c["direction"] > 0 else "lower"
    lo, hi = c["ci"]
    lo95, hi95 = c["ci95"]
    fmt = "{:+.3f}" if c["binary"] else "{:+.4f}"
    return (f"rad - {c['other']} = {fmt.format(c['effect'])} {c['metric']} ({better} is "
            f"better); 95% CI [{fmt.format(lo95)}, {fmt.format(hi95)}], "
            f"{100 * c['ci_level']:.2f}% CI (Bonferroni, {m} claims) "
            f"[{fmt.format(lo)}, {fmt.format(hi)}]; {c['test']} p = {c['p']:.3g} "
            f"(Holm {c['p_holm']:.3g}); MDE {abs(float(fmt.format(c['mde']))):g} at "
            f"{c['n_items']} items x seeds = {c['n_pairs']} pairs")


def _search_claims(selections: list[dict]) -> list[dict]:
    """The search on its own objective, per seed: its best set against the warm starts it was
    given (the profile's top-k, the uniform interleave), measured on the selection prompts."""
    out = []
    if not selections:
        return out
    objective, trials = selections[0]["objective"], selections[0]["trials"]
    best = mean_std([s["score"] for s in selections])
    for start, claim in (("profile-top-k", "BO beats the profile's top-k"),
                         ("uniform", "selected draft beats the uniform draft")):
        if not all(start in s.get("warm_starts", {}) for s in selections):
            continue
        ref = mean_std([s["warm_starts"][start]["score"] for s in selections])
        c = compare(best, ref, True)
        kept = sum(s["layers"] == s["warm_starts"][start]["layers"] for s in selections)
        out.append({"claim": f"{claim} (self-speculative {objective})", "status": c["status"],
                    "rad": best["mean"], start: ref["mean"], **c,
                    "detail": f"search best {best['mean']:.3f} vs {start} {ref['mean']:.3f} on "
                    f"the selection prompts ({len(selections)} seeds x {trials} trials): margin "
                    f"{c['margin']:.3f}, seed spread {c['spread']:.3f}"
                    + (f"; the search kept the {start} set in {kept} of {len(selections)} seeds"
                       if kept else "")})
    return out


def _convergence_claim(result: dict) -> dict:
    claim = "RAD converges faster than plain distillation"
    curves = result["curves"]
    ref = [v for k, v in curves.items() if method_of(k) == CONVERGENCE_REFERENCE]
    mine = [v for k, v in curves.items() if method_of(k) == "rad"]
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
