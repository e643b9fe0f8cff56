"""RAD step 2, selection: which k attention layers become Mamba2 mixers.

Every selector has one signature, `selector(request) -> sorted list of k distinct layer indices`,
and one registry (`SELECTORS`), so later steps (build, distill, report) treat RAD's search and
its baselines alike; the baselines register theirs in `baselines/selectors/`. What a selector
needs from the runner is a fact on its entry, not a name check: `reads` names the measurement
record it chooses from (`req.context["record"]`: RAD's `selection`, the diagnosis's
`redundancy` profile, the restore-one-layer `kl-profile`), `replaces_all` marks full SSM.

RAD's own selector: Bayesian optimisation over a relaxed mask x in [0,1]^L, turned into
exactly k skipped attention layers by top-k (as SWIFT, arXiv 2410.06916), maximising the
self-speculative objective. The optuna study lives in a storage (SQLite by default), so a killed
search resumes where it stopped.

Objective `accepted-length` (default): mean draft tokens accepted per verify round. At fixed k
the draft's cost per token is fixed, so this ranks skip sets as throughput does, without the
timing noise of shared CPUs. `tokens-per-s` is the paper's objective, selectable. Both decode
for real; `teacher-forced` is the same mean accepted length simulated exactly from the
verifier's cached continuations (`rad.method.acceptance`), 20-40x faster on the embedded
teacher, so a search can afford hundreds of trials.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rad.digest import json_digest
from rad.registry import Registry
from rad.runtime.decode import SpecStats


@dataclass(frozen=True)
class SelectionRequest:
    n_layers: int
    k: int
    seed: int = 0
    # What a measurement-driven selector needs: `record`, the parsed JSON its entry `reads`.
    # Selectors with `reads=None` ignore it.
    context: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.k <= self.n_layers:
            raise ValueError(f"k must be in 1..{self.n_layers} (the number of layers); "
                             f"got {self.k}")


@dataclass(frozen=True)
class Selector:
    name: str
    fn: Callable[[SelectionRequest], list[int]]
    description: str = ""
    # The measurement record this selector chooses from (one of RECORDS), or None when
    # (n_layers, k, seed) is all it needs.
    reads: str | None = None
    replaces_all: bool = False  # k is always the number of layers

    def __post_init__(self) -> None:
        if self.reads is not None and self.reads not in RECORDS:
            raise ValueError(f"selector {self.name}: unknown record {self.reads!r}; known: "
                             f"{', '.join(RECORDS)}")

    @property
    def seeded_record(self) -> bool:
        """Its record is measured per seed (RAD's search), not once per model."""
        return self.reads is not None and RECORDS[self.reads].per_seed

    def __call__(self, req: SelectionRequest) -> list[int]:
        layers = self.fn(req)
        if len(layers) != req.k or len(set(layers)) != req.k or \
                not all(0 <= i < req.n_layers for i in layers):
            raise ValueError(f"selector {self.name} returned {layers}, not {req.k} distinct "
                             f"layers in 0..{req.n_layers - 1}")
        return sorted(layers)


@dataclass(frozen=True)
class RecordKind:
    """A measurement a selector can read: the JSON file that holds it, whether it is made
    per seed, and the step that makes it. The runner and `rad distill --selection` produce and
    pass these files."""
    file: str
    per_seed: bool
    step: str  # the runner's step that writes it, and the `rad` command of the same name

    @property
    def command(self) -> str:
        return f"rad {self.step}"


RECORDS: dict[str, RecordKind] = {
    "selection": RecordKind("selection.json", True, "select"),
    "redundancy": RecordKind("redundancy.json", False, "diagnose"),
    "kl-profile": RecordKind("kl_profile.json", False, "kl-profile"),
}

# The baselines' selectors register from their own package, imported on the first lookup.
SELECTORS: Registry[Selector] = Registry("selector", plugins=("baselines.selectors",))


def register_selector(name: str, description: str = "", reads: str | None = None,
                      replaces_all: bool = False):
    def deco(fn: Callable[[SelectionRequest], list[int]]):
        SELECTORS.register(name, Selector(name, fn, description or (fn.__doc__ or "").strip(),
                                          reads, replaces_all))
        return fn
    return deco


def get_selector(name: str) -> Selector:
    return SELECTORS.get(name)


@dataclass(frozen=True)
class Objective:
    score: Callable[[SpecStats], float]
    teacher_forced: bool = False  # measured by simulation (no decoding loop, no timing)


OBJECTIVES: Registry[Objective] = Registry("selection objective")
OBJECTIVES.register("accepted-length", Objective(lambda s: s.mean_accepted_length))
OBJECTIVES.register("tokens-per-s", Objective(lambda s: s.tokens_per_s))
OBJECTIVES.register("teacher-forced", Objective(lambda s: s.mean_accepted_length, True))


def top_k(x: Sequence[float], k: int) -> list[int]:
    """Indices of the k largest entries (ties to the lower index), sorted. Depends only on the
    order of x, so any strictly increasing rescaling of x gives the same set."""
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    return sorted(order[:k])


def mask_for(layers: Sequence[int], n_layers: int) -> dict[str, float]:
    """The relaxed-mask point whose top-k is exactly `layers` (for warm starts)."""
    chosen = set(layers)
    return {f"x{i}": 1.0 if i in chosen else 0.0 for i in range(n_layers)}


def _sampler(name: str) -> Callable[[int], Any]:
    """optuna sampler by name, built from a seed (optuna imported only when a search runs)."""
    def make(seed: int):
        import optuna
        return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "gp": optuna.samplers.GPSampler,
                "cmaes": optuna.samplers.CmaEsSampler}[name](seed=seed)
    return make


# tpe: RAD's (Bayesian); random: the search's floor; gp: optuna's Gaussian process (slow: its
# per-trial cost grows with the trials, ~0.2 s at 50 trials on 30 dimensions here); cmaes:
# CMA-ES (the `cmaes` package), an evolution strategy with no per-trial model fit.
SAMPLERS: Registry[Callable[[int], Any]] = Registry("sampler")
for _name in ("tpe", "random", "gp", "cmaes"):
    SAMPLERS.register(_name, _sampler(_name))


@dataclass(frozen=True)
class SearchSpec:
    n_layers: int
    k: int
    trials: int
    seed: int
    storage: str | None  # an optuna storage URL; None keeps the study in memory
    study_name: str
    sampler: str = "tpe"

    @staticmethod
    def study_name_for(settings: Mapping) -> str:
        """Same settings -> same study in the storage (that is what makes resumption work)."""
        return f"rad-select-{json_digest(settings)}"


def bayesian_select(evaluate: Callable[[frozenset[int]], float], spec: SearchSpec,
                    warm_starts: Mapping[str, Sequence[int]] = (), progress: bool = True) -> dict:
    """Run (or resume) the study until it holds `spec.trials` completed trials.

    evaluate: skip set -> objective value (higher is better). A skip set measured before, in
    this run or a previous one, is looked up instead of measured again.
    """
    import optuna  # heavy (about a second); only the search needs it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=spec.study_name, storage=spec.storage, direction="maximize",
        sampler=SAMPLERS.get(spec.sampler)(spec.seed), load_if_exists=True)
    warm_starts = dict(warm_starts)
    if not study.trials:  # a fresh study: measure the informed guesses first
        for name, layers in warm_starts.items():
            study.enqueue_trial(mask_for(layers, spec.n_layers), user_attrs={"warm_start": name})
    measured = {tuple(t.user_attrs["layers"]): t.value for t in _complete(study)}

    def objective(trial) -> float:
        x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(spec.n_layers)]
        layers = top_k(x, spec.k)
        trial.set_user_attr("layers", layers)
        key = tuple(layers)
        if key in measured:
            trial.set_user_attr("cached", True)
            return measured[key]
        measured[key] = evaluate(frozenset(layers))
        return measured[key]

    remaining = spec.trials - len(_complete(study))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, show_progress_bar=progress)
    complete = _complete(study)
    best = max(complete, key=lambda t: t.value)  # the earliest trial among equals
    warm = {}
    for t in complete:
        name = t.user_attrs.get("warm_start")
        if name:
            warm[name] = {"layers": t.user_attrs["layers"], "score": t.value}
    return {
        "k": spec.k,
        "layers": best.user_attrs["layers"],
        "score": best.value,
        "warm_starts": warm,
        "trials": len(complete),
        "distinct_sets_measured": len({tuple(t.user_attrs["layers"]) for t in complete}),
        "seed": spec.seed,
        "sampler": spec.sampler,
        # after each completed trial, in order: the best value so far and the number of
        # distinct sets measured so far (the search's progress curve and its real cost)
        "best_so_far": _best_so_far(complete),
        "distinct_so_far": _distinct_so_far(complete),
        "study_name": spec.study_name,
        "storage": spec.storage,
    }


def _best_so_far(trials: list) -> list[float]:
    best, out = float("-inf"), []
    for t in sorted(trials, key=lambda t: t.number):
        best = max(best, t.value)
        out.append(best)
    return out


def _distinct_so_far(trials: list) -> list[int]:
    seen, out = set(), []
    for t in sorted(trials, key=lambda t: t.number):
        seen.add(tuple(t.user_attrs["layers"]))
        out.append(len(seen))
    return out


def _complete(study) -> list:
    import optuna  # see bayesian_select
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def profile_top_k(redundancy: dict, k: int) -> list[int]:
    """The k layers whose lone skipping keeps acceptance highest (a diagnosis's top-k)."""
    return top_k([e["acceptance_rate"] for e in redundancy["layers"]], k)


@register_selector("rad", "RAD: Bayesian search over self-speculative decoding",
                   reads="selection")
def rad_selector(req: SelectionRequest) -> list[int]:
    """The layers of RAD's search (`bayesian_select`, run by `rad select` or the runner's
    select step for this seed): `req.context["record"]` is its selection.json."""
    record = req.context["record"]
    if record.get("k") != req.k:
        raise ValueError(f"the selection record chose k={record.get('k')} layers, not {req.k}")
    return list(record["layers"])
