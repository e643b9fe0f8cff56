"""The diagnose / select / compare-sets commands: RAD's layer choice on a real teacher, written
as JSON (+ PNG, Markdown) a reader can check."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from baselines.selectors.kl_guided import restore_one_kl
from harness.common.errors import UserError
from harness.common.files import atomic_write_text, check_output_file, read_json
from harness.experiment.distill_data import DataConfig, build_data, cached_targets
from harness.experiment.prompt_sets import PromptSet, build_prompt_set
from harness.models import LoadedModel, inference_dtype, load_model
from harness.report.plots import plot_profile, plot_sampler_curves
from harness.report.stats import spearman
from harness.report.tables import comparison_markdown, sampler_markdown
from rad.method.acceptance import VerifierTrace, simulate_skip_set, trace_verifier
from rad.method.diagnose import SpecSettings, measure_skip_set, redundancy_profile
from rad.method.select import (
    OBJECTIVES,
    RECORDS,
    SearchSpec,
    SelectionRequest,
    bayesian_select,
    get_selector,
    profile_top_k,
)
from rad.runtime.decode import SpecStats, generate
from rad.runtime.precision import FP32, Precision


@dataclass
class Workload:
    lm: LoadedModel
    prompts: PromptSet
    ids: list[torch.Tensor]  # one (1, T) tensor per prompt
    settings: SpecSettings
    dtype: str  # the weights' stored dtype; `lm` runs in `precision`'s inference dtype for it
    precision: Precision = FP32
    _trace: VerifierTrace | None = None  # the verifier's continuations, traced once

    def provenance(self) -> dict:
        return {"model": self.lm.name, "dtype": self.dtype,
                "precision": self.precision.as_dict(), "prompt_set": self.prompts.spec,
                "prompt_sha256": self.prompts.sha256, "n_layers": self.lm.model.cfg.n_layers,
                "settings": self.settings.as_dict()}

    def measure(self, skip) -> SpecStats:
        """Real self-speculative decoding of every prompt with `skip` (stats summed)."""
        return measure_skip_set(self.lm.model, self.ids, skip, self.settings,
                                self.lm.eos_token_ids)

    def simulate(self, skip) -> SpecStats:
        """The same stats (no times), teacher-forced from the cached verifier trace."""
        if self.settings.stop_threshold is not None:
            raise UserError("the teacher-forced objective needs a fixed gamma (no "
                            "--stop-threshold); use --objective accepted-length")
        if self._trace is None:
            try:
                self._trace = trace_verifier(self.lm.model, self.ids,
                                             self.settings.max_new_tokens,
                                             self.lm.eos_token_ids)
            except ValueError as e:
                raise UserError(str(e)) from None
        return simulate_skip_set(self.lm.model, self._trace, skip, self.settings.gamma)

    def stats_for(self, objective: str) -> Callable[[frozenset[int]], SpecStats]:
        """skip set -> stats, measured the way the objective is defined (real decoding, or the
        exact teacher-forced simulation: the same counts, no times)."""
        return self.simulate if OBJECTIVES.get(objective).teacher_forced else self.measure

    def measure_for(self, objective: str) -> Callable[[frozenset[int]], float]:
        """skip set -> objective value, measured the way the objective is defined."""
        score, stats = OBJECTIVES.get(objective).score, self.stats_for(objective)
        return lambda skip: score(stats(skip))


def load_workload(model: str, prompts: str, settings: SpecSettings, dtype: str,
                  device: str = "cpu", precision: Precision = FP32) -> Workload:
    if settings.gamma < 1 or settings.max_new_tokens < 1:
        raise UserError("--gamma and --max-new-tokens must be >= 1")
    lm = load_model(model, dtype=inference_dtype(dtype, precision), device=device)
    return workload_for(lm, prompts, settings, dtype, precision)


def workload_for(lm: LoadedModel, prompts: str, settings: SpecSettings, dtype: str,
                 precision: Precision = FP32) -> Workload:
    """The prompt set tokenised for an already loaded model (loaded in `precision`'s inference
    dtype for `dtype`)."""
    pset = build_prompt_set(prompts, lm.tokenizer)
    ids = [torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]])
           for t in pset.texts]
    return Workload(lm, pset, ids, settings, dtype, precision)


def _check_k(k: int, n_layers: int) -> None:
    if not 0 < k <= n_layers:
        raise UserError(f"--k must be in 1..{n_layers} (the model's layers); got {k}")


def _check_objective(w: Workload, objective: str) -> None:
    if OBJECTIVES.get(objective).teacher_forced and w.settings.stop_threshold is not None:
        raise UserError("the teacher-forced objective needs a fixed gamma (no "
                        "--stop-threshold); use --objective accepted-length")


# -- diagnose ------------------------------------------------------------------------------------
def run_diagnose(w: Workload, out: Path, objective: str = "accepted-length") -> Path:
    """The per-layer redundancy profile, measured as `objective` measures (a teacher-forced
    objective simulates every layer's draft exactly: same acceptance, no decoding loop)."""
    path = check_output_file(out / RECORDS["redundancy"].file)
    _check_objective(w, objective)
    t0 = time.time()
    layers = redundancy_profile(w.lm.model.cfg.n_layers, w.stats_for(objective))
    result = {"record": "redundancy", **w.provenance(),
              "measured_by": "teacher-forced" if OBJECTIVES.get(objective).teacher_forced
              else "decoding", "layers": layers, "wall_s": time.time() - t0}
    plot_profile(layers, out / "redundancy.png",
                 f"{w.lm.name}: self-speculative acceptance, one attention layer skipped "
                 f"({w.prompts.spec}, gamma {w.settings.gamma})")
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


# -- select --------------------------------------------------------------------------------------
def run_select(w: Workload, k: int, trials: int, objective: str, seed: int, out: Path,
               storage: str | None, redundancy: Path | None, sampler: str = "tpe") -> Path:
    n_layers = w.lm.model.cfg.n_layers
    _check_k(k, n_layers)
    if trials < 1:
        raise UserError("--trials must be >= 1")
    _check_objective(w, objective)
    if storage is not None and storage.startswith("sqlite:///"):
        check_output_file(Path(storage.removeprefix("sqlite:///")))
    path = check_output_file(out / RECORDS["selection"].file)
    if storage is None:
        storage = f"sqlite:///{(out / 'study.sqlite3').resolve()}"
    warm = {"uniform": get_selector("uniform")(SelectionRequest(n_layers, k, seed))}
    if redundancy is not None:
        warm["profile-top-k"] = profile_top_k(read_json(redundancy, "redundancy profile"), k)
    # tpe and fp32 stay out of the hash: studies made before samplers and precisions were
    # selectable resume; bf16 goes in by its resolved name (a reworded reason is the same study)
    settings = {**{key: v for key, v in w.provenance().items() if key != "precision"},
                "k": k, "objective": objective, "seed": seed,
                **({"sampler": sampler} if sampler != "tpe" else {}),
                **({"precision": w.precision.resolved} if w.precision.bf16 else {})}
    spec = SearchSpec(n_layers, k, trials, seed, storage, SearchSpec.study_name_for(settings),
                      sampler)
    t0 = time.time()
    result = bayesian_select(w.measure_for(objective), spec, warm)
    selection = {"record": "selection", **result, **w.provenance(), "objective": objective,
                 "wall_s": time.time() - t0}
    atomic_write_text(path, json.dumps(selection, indent=2))
    return path


# -- compare-sets: does the fast objective rank skip sets as real decoding's speed does? --------
def run_compare(w: Workload, sets: dict[str, list[int]], repeats: int, out: Path) -> Path:
    """Each skip set's acceptance and its speedup over plain greedy decoding, timed side by side
    (plain greedy runs in every repeat beside the sets; speedup = median of per-repeat ratios),
    beside the teacher-forced objective of the same set: the table validates it (Spearman rank
    correlation with the really decoded accepted length per round, and exact agreement)."""
    json_path = check_output_file(out / "selection_comparison.json")
    md_path = check_output_file(out / "selection_comparison.md")
    model = w.lm.model

    def plain() -> float:
        t0, n = time.perf_counter(), 0
        for ids in w.ids:
            n += len(generate(model, ids, None, w.settings.max_new_tokens,
                              w.lm.eos_token_ids).tokens[0])
        return n / (time.perf_counter() - t0)

    plain()  # warm-up
    ratios: dict[str, list[float]] = {name: [] for name in sets}
    stats = {}
    plain_tok_s = []
    bar = tqdm(total=repeats * (len(sets) + 1), desc="compare skip sets", unit="run")
    for _ in range(repeats):
        base = plain()
        plain_tok_s.append(base)
        bar.update()
        measured: dict[frozenset, object] = {}  # two names for one set are measured once
        for name, layers in sets.items():
            key = frozenset(layers)
            if key not in measured:
                measured[key] = w.measure(key)
            stats[name] = measured[key]  # token counts are identical across repeats
            ratios[name].append(measured[key].tokens_per_s / base)
            bar.update()
    bar.close()
    t0 = time.perf_counter()
    w.simulate(frozenset())  # traces the verifier once: its cost is reported apart
    trace_s = time.perf_counter() - t0
    simulated: dict[frozenset, tuple[SpecStats, float]] = {}
    for key in {frozenset(v) for v in sets.values()}:
        t0 = time.perf_counter()
        sim = w.simulate(key)
        simulated[key] = (sim, time.perf_counter() - t0)
    rows = []
    for name, layers in sets.items():
        s = stats[name]
        sim, sim_s = simulated[frozenset(layers)]
        rows.append({"set": name, "layers": sorted(layers),
                     "acceptance_rate": s.acceptance_rate,
                     "mean_accepted_length": s.mean_accepted_length,
                     "drafted": s.drafted, "accepted": s.accepted,
                     "speedup_vs_greedy": statistics.median(ratios[name]),
                     "speedup_runs": ratios[name], "tokens_per_s": s.tokens_per_s,
                     "decode_s": s.total_s,
                     "teacher_forced": {"mean_accepted_length": sim.mean_accepted_length,
                                        "accepted": sim.accepted, "drafted": sim.drafted,
                                        "wall_s": sim_s}})
    distinct = list({tuple(r["layers"]): r for r in rows}.values())  # one name per set counts
    real = [r["mean_accepted_length"] for r in distinct]
    fast = [r["teacher_forced"]["mean_accepted_length"] for r in distinct]
    result = {**w.provenance(), "repeats": repeats, "plain_greedy_tok_s": plain_tok_s,
              "threads": torch.get_num_threads(), "rows": rows, "trace_s": trace_s,
              "validation": {"spearman": spearman(fast, real) if len(distinct) > 1 else None,
                             "exact_rows": sum(r["accepted"] == r["teacher_forced"]["accepted"]
                                               and r["drafted"] == r["teacher_forced"]["drafted"]
                                               for r in distinct),
                             "rows": len(distinct)}}
    atomic_write_text(json_path, json.dumps(result, indent=2))
    atomic_write_text(md_path, comparison_markdown(result))
    return md_path


def comparison_sets(n_layers: int, k: int, selection: dict | None, redundancy: dict | None,
                    n_random: int, seed: int) -> dict[str, list[int]]:
    sets: dict[str, list[int]] = {}
    if selection is not None:
        if selection.get("k") != k:
            raise UserError(f"selection.json has k={selection.get('k')}, not --k {k}")
        sets["bayesian"] = selection["layers"]
    sets["uniform"] = get_selector("uniform")(SelectionRequest(n_layers, k, seed))
    if redundancy is not None:
        sets["profile-top-k"] = profile_top_k(redundancy, k)
        # the bad end of the range: the k layers whose lone skipping hurts acceptance most
        sets["profile-bottom-k"] = profile_top_k(
            {"layers": [{"acceptance_rate": -e["acceptance_rate"]}
                        for e in redundancy["layers"]]}, k)
    for i in range(n_random):
        sets[f"random-{seed + i}"] = get_selector("random")(SelectionRequest(n_layers, k,
                                                                               seed + i))
    return sets


# -- kl-profile: what the kl-guided selector reads ----------------------------------------------
def run_kl_profile(lm: LoadedModel, teacher: LoadedModel, data_cfg: DataConfig, rows: int,
                   out: Path, dtype: str, precision: Precision = FP32) -> Path:
    """Restore-one-layer KL (`baselines.selectors.kl_guided`) on the first `rows` *training*
    rows of the distillation data, against the teacher's cached top-k targets (the targets
    every method's distillation reads: the same `dtype` and `precision` key them). `lm` and
    `teacher` are loaded in `precision`'s inference dtype for weights stored in `dtype`."""
    path = check_output_file(out / RECORDS["kl-profile"].file)
    if not 1 <= rows <= data_cfg.n_train:
        raise UserError(f"kl-profile rows must be in 1..{data_cfg.n_train} (the training rows)")
    t0 = time.time()
    data = build_data(lm.tokenizer, lm.eos_token_ids[0], data_cfg)
    train_t, _, targets_key = cached_targets(teacher.model, teacher.folder, data, data_cfg,
                                             dtype, precision)
    profile = restore_one_kl(lm.model, data.train_ids[:rows], train_t[:rows])
    result = {"record": "kl-profile", "model": lm.name, "teacher": teacher.name, "dtype": dtype,
              "precision": precision.as_dict(),
              "n_layers": lm.model.cfg.n_layers, "rows": rows, "seq_len": data_cfg.seq_len,
              "split": "train", "data_sha256": data.sha256, "targets_key": targets_key,
              **profile, "wall_s": time.time() - t0}
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


# -- compare-samplers: does Bayesian optimisation find better sets than its alternatives? -------
def run_compare_samplers(w: Workload, k: int, samplers: list[str], seeds: list[int],
                         trials: int, objective: str, redundancy: dict | None,
                         out: Path) -> Path:
    """Each sampler x seed runs `trials` trials from scratch (no warm start, in memory); the
    best-so-far curves go on one plot beside the redundancy profile's top-k as a line. Every
    skip set is measured once for all studies (the objective is deterministic when it is
    teacher-forced; with a decoding objective the cache keeps the first measurement)."""
    n_layers = w.lm.model.cfg.n_layers
    _check_k(k, n_layers)
    _check_objective(w, objective)
    if trials < 1 or not samplers or not seeds:
        raise UserError("--trials must be >= 1, with at least one sampler and one seed")
    json_path = check_output_file(out / "sampler_curves.json")  # bad input: no folder made
    md_path = check_output_file(out / "sampler_curves.md")
    png_path = check_output_file(out / "sampler_curves.png")
    measure = w.measure_for(objective)
    cache: dict[frozenset, float] = {}

    def evaluate(skip: frozenset) -> float:
        if skip not in cache:
            cache[skip] = measure(skip)
        return cache[skip]

    reference = {"uniform": get_selector("uniform")(SelectionRequest(n_layers, k))}
    if redundancy is not None:
        reference["profile-top-k"] = profile_top_k(redundancy, k)
    lines = {name: {"layers": layers, "score": evaluate(frozenset(layers))}
             for name, layers in reference.items()}
    runs = []
    for sampler in samplers:
        for seed in seeds:
            spec = SearchSpec(n_layers, k, trials, seed, None, f"{sampler}-{seed}", sampler)
            t0 = time.time()
            r = bayesian_select(evaluate, spec, progress=True)  # minutes per run
            runs.append({"sampler": sampler, "seed": seed, "layers": r["layers"],
                         "score": r["score"], "trials": r["trials"],
                         "distinct_sets_measured": r["distinct_sets_measured"],
                         "best_so_far": r["best_so_far"], "distinct_so_far": r["distinct_so_far"],
                         "wall_s": time.time() - t0})
            print(f"{sampler} seed {seed}: best {r['score']:.4f} after {trials} trials "
                  f"({r['distinct_sets_measured']} distinct sets, {time.time() - t0:.0f} s)",
                  flush=True)
    result = {**w.provenance(), "k": k, "objective": objective, "trials": trials,
              "samplers": samplers, "seeds": seeds, "reference_sets": lines, "runs": runs,
              "distinct_sets_measured_in_all": len(cache), "threads": torch.get_num_threads()}
    plot_sampler_curves(result, png_path)
    atomic_write_text(json_path, json.dumps(result, indent=2))
    atomic_write_text(md_path, sampler_markdown(result))
    return md_path
