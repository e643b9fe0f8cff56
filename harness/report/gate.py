"""`rad gate --baseline A.json --current B.json`: the regression check for CI.

Quality metrics (accuracy per task, held-out KL, state bytes) are compared with the tolerances in
the baseline's config (`gate:`); timing only as the speedup over the base model measured in the
same run, never as an absolute time. Exit 0: no regression; 1: at least one; 2: the files cannot
be compared (unreadable, another schema, another profile or config, a method missing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.common.errors import UserError
from harness.report.schema import SCHEMA

# Config keys that do not change what a run measures: they may differ between the two files.
_NOT_COMPARED = ("description", "gate", "budget_minutes")


class GateInputError(UserError):
    """The two results files cannot be compared (exit 2)."""


@dataclass
class Check:
    method: str
    metric: str
    baseline: float
    current: float
    limit: float
    higher_is_better: bool

    @property
    def regressed(self) -> bool:
        return self.current < self.limit if self.higher_is_better else self.current > self.limit


def _load(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise GateInputError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise GateInputError(f"{what} {path} has schema {found!r}, expected {SCHEMA!r} (a "
                             "results.json written by this version's 'rad report')")
    return data


def _config_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    for key in sorted(set(a) | set(b)):
        if not prefix and key in _NOT_COMPARED:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diff = _config_difference(va, vb, f"{prefix}{key}.")
            if diff:
                return diff
        elif va != vb:
            return f"{prefix}{key}: {va!r} vs {vb!r}"
    return None


def checks(baseline: dict, current: dict) -> list[Check]:
    if baseline["profile"] != current["profile"]:
        raise GateInputError(f"profile mismatch: baseline {baseline['profile']!r}, current "
                             f"{current['profile']!r}")
    diff = _config_difference(baseline["config"], current["config"])
    if diff:
        raise GateInputError(f"the runs used different configs ({diff}); re-run the baseline")
    tol = baseline["config"]["gate"]
    rows = {r["method"]: r["metrics"] for r in current["leaderboard"]}
    out = []
    for row in baseline["leaderboard"]:
        method = row["method"]
        if method not in rows:
            raise GateInputError(f"the current run has no {method!r} row (incomplete run?)")
        base, cur = row["metrics"], rows[method]
        for task in baseline["config"]["eval"]["tasks"]:
            b = base[task]["mean"]
            out.append(Check(method, task, b, cur[task]["mean"], b - tol["accuracy_drop"], True))
        b = base["heldout_kl"]["mean"]
        out.append(Check(method, "heldout_kl", b, cur["heldout_kl"]["mean"],
                         b * (1 + tol["kl_increase"]) + 1e-9, False))
        b = base["state_mib"]["mean"]
        out.append(Check(method, "state_mib", b, cur["state_mib"]["mean"], b * (1 + 1e-9),
                         False))
        if not row.get("reference"):  # the reference's ratio to itself is 1 by construction
            b = base["speedup"]["mean"]
            out.append(Check(method, "speedup", b, cur["speedup"]["mean"],
                             b * (1 - tol["speedup_drop"]), True))
    return out


def table(results: list[Check], tasks: dict[str, dict] | None = None) -> str:
    """tasks: the baseline's task facts (labels); a metric without one prints as its key."""
    names = {**{t: f["label"] for t, f in (tasks or {}).items()}, "heldout_kl": "held-out KL",
             "state_mib": "state MiB", "speedup": "speedup vs teacher"}
    lines = [f"{'method':14s} {'metric':20s} {'baseline':>10s} {'current':>10s} "
             f"{'change':>9s} {'limit':>10s}  status"]
    for c in results:
        change = c.current - c.baseline
        lines.append(f"{c.method:14s} {names.get(c.metric, c.metric):20s} {c.baseline:10.4g} "
                     f"{c.current:10.4g} {change:+9.2g} "
                     f"{'>=' if c.higher_is_better else '<='} {c.limit:7.4g}  "
                     f"{'REGRESSION' if c.regressed else 'ok'}")
    return "\n".join(lines)


def run_gate(baseline_path: Path, current_path: Path) -> int:
    baseline = _load(baseline_path, "baseline")
    current = _load(current_path, "current")
    results = checks(baseline, current)
    print(table(results, baseline.get("tasks")))
    bad = [c for c in results if c.regressed]
    if bad:
        print(f"rad gate: {len(bad)} regression(s) against {baseline_path}")
        return 1
    print(f"rad gate: no regression ({len(results)} checks against {baseline_path})")
    return 0
