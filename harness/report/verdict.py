"""The verdict: one line per claim of the paper, each a comparison of two leaderboard rows (or
curves) with its status. Claims name the methods they are about; everything else comes from
the results JSON."""

from __future__ import annotations

import math
import statistics

from harness.report.schema import method_of
from harness.report.stats import (
    CONVERGENCE_REFERENCE,
    binomial_se,
    compare,
    first_reaching,
    mean_std,
)


def _row(result: dict, method: str) -> dict | None:
    return next((r for r in result["leaderboard"] if r["method"] == method), None)


def verdict(result: dict) -> list[dict]:
    tasks = result["tasks"]
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

    for other, name in (("random-swap", "random layers"), ("uniform-swap", "uniform layers"),
                        ("profile-top-k", "the profile's top-k layers"),
                        ("kl-guided", "KL-guided selection")):
        if _row(result, other) is not None or other in ("random-swap", "uniform-swap"):
            kl_claim(f"selection beats {name} (same init and training)", other)
    out.extend(_search_claims(result.get("selections") or []))
    kl_claim("RAD beats plain distillation at equal budget", CONVERGENCE_REFERENCE)
    out.append(_convergence_claim(result))
    teacher = next((r for r in result["leaderboard"] if r["reference"]), None)
    self_distill = result["config"].get("teacher") in (None, result["config"]["model"])
    if teacher is not None:
        n = min(c["metrics"]["eval_n"] for c in result["cells"])
        for t in tasks:
            a, b = m[t], teacher["metrics"][t]
            c = compare(a, b, tasks[t]["higher_is_better"],
                        floor=binomial_se(b["mean"], n) * math.sqrt(2))
            out.append({"claim": ("self-distilled" if self_distill else "distilled")
                        + f" hybrid surpasses the base model on {tasks[t]['label']}",
                        "status": c["status"], **c,
                        "detail": f"rad {a['mean']:.3f} vs base {b['mean']:.3f} on {n} problems"
                        f" (spread includes the binomial standard error, {c['spread']:.3f})"})
    return out


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
