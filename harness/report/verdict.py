"""The verdict: one line per claim of the paper, each a comparison of two leaderboard rows (or
curves) with its status. Claims name the methods they are about; everything else comes from
the results JSON."""

from __future__ import annotations

import math
import statistics

from harness.report.schema import method_of
from harness.report.stats import CONVERGENCE_REFERENCE, binomial_se, compare, first_reaching


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
