"""`rad reproduce`: a profile expands into cells (method x seed) and each cell into steps.

    diagnose                      once per profile: the redundancy profile (profile-top-k reads
                                  it; it warm-starts every search)
    select                        per rad seed: the Bayesian search, seeded by the cell
    kl-profile                    once per profile: restore-one-layer KL (kl-guided reads it)
    distill  (build + train)      per trained cell; writes the hybrid folder
    eval                          per model (the base model once, each trained cell)
    bench                         per cell: its model and the base model, side by side

Every step's folder is named by a hash of its inputs: the step's config, the code version
(`harness.common.provenance.code_version`) and the keys of the steps it reads. A step is
finished when its `step.json` exists (written last); a re-run skips finished steps, so a killed
run resumes where it stopped: an unfinished distillation from its checkpoint, any other step
from scratch.
Each finished cell writes `cells/<method>-s<seed>.json`; the report is rebuilt from those.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.common.errors import UserError
from harness.common.files import atomic_write_text, ensure_writable_dir
from harness.common.provenance import code_version, provenance
from harness.experiment.bench_throughput import bench_pair
from harness.experiment.config import ExperimentConfig
from harness.experiment.distill import DistillRequest, distill_configs, run_distill
from harness.experiment.selection import (
    Workload,
    run_diagnose,
    run_kl_profile,
    run_select,
    workload_for,
)
from harness.experiment.steps import StepStore
from harness.models import LoadedModel, inference_dtype, load_model
from harness.report.schema import CELLS_DIR, RUN_FILE, STEPS_DIR, cell_name
from harness.tasks.base import TASKS, CodeExecution, Decoding, Problems, Task
from harness.tasks.data import load_task
from harness.tasks.evaluate import EvalConfig, run_eval, validate
from rad.method.diagnose import SpecSettings
from rad.method.recipes import get_recipe
from rad.method.select import RECORDS
from rad.runtime.distributed import current_world
from rad.runtime.precision import Precision, resolve_precision


@dataclass(frozen=True)
class Cell:
    method: str
    seed: int

    @property
    def name(self) -> str:
        return cell_name(self.method, self.seed)


def plan_cells(cfg: ExperimentConfig) -> list[Cell]:
    """The reference row is seed-independent (greedy evaluation, nothing trained): one cell."""
    return [Cell(m, s) for m in cfg.methods
            for s in (cfg.seeds[:1] if get_recipe(m).is_reference else cfg.seeds_for(m))]


def run_manifest(cfg: ExperimentConfig) -> dict:
    """run.json: the config, and the facts the report needs without the registries (planned
    cells, each task's label and headline metric, which method is the reference row)."""
    return {"profile": cfg.profile, "config": cfg.as_dict(), "config_hash": cfg.config_hash(),
            "cells": [c.name for c in plan_cells(cfg)],
            "tasks": {t: TASKS.get(t).facts() for t in cfg.eval.tasks},
            "methods": {m: {"reference": get_recipe(m).is_reference,
                            "description": get_recipe(m).description} for m in cfg.methods}}


def _items(task: Task, samples: Path) -> dict:
    """Per evaluated problem (first sample of each), its id and whether it was right."""
    ids, correct, seen = [], [], set()
    for line in samples.read_text().splitlines():
        rec = json.loads(line)
        key = rec[task.item_id]
        if key in seen:
            continue
        seen.add(key)
        ids.append(key)
        correct.append(int(bool(rec[task.item_correct])))
    return {"ids": ids, "correct": correct}


def run_precision(cfg: ExperimentConfig) -> Precision:
    """The profile's precision as it resolves on this machine (every stage's)."""
    return resolve_precision(cfg.precision, cfg.device)


def precision_inputs(precision: Precision) -> dict:
    """What a step key adds for the precision of a step whose numbers it changes: bf16 by its
    resolved name (fp32 steps keep the keys they always had, as cached targets do)."""
    return {"precision": precision.resolved} if precision.bf16 else {}


def distill_settings(cfg: ExperimentConfig) -> dict:
    """The profile's `distill:` with its precision, as `distill_configs` takes them (the loop
    takes the requested name and resolves it per device)."""
    return {**asdict(cfg.distill), "precision": cfg.precision}


def load_base(cfg: ExperimentConfig) -> LoadedModel:
    """The base model, once per process, under the process settings the whole run computes
    with, in the precision's inference dtype (it serves the inference stages only: selection,
    the KL profile, benches; distillation loads its own, in `dtype`). Denormal flushing
    changes float results; eval turns it on, so it is on from the start (a resumed run must
    compute exactly what an uninterrupted one does)."""
    torch.set_flush_denormal(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return load_model(cfg.model, dtype=inference_dtype(cfg.dtype, run_precision(cfg)),
                      device=cfg.device)


# -- preflight: everything that can fail is checked before anything is written --------------------
def preflight(cfg: ExperimentConfig, out: Path, allow_code_execution: bool) -> LoadedModel:
    """Data, opt-in, model, k, and the run folder; returns the loaded base model, which the
    `Runner` then uses (under torchrun: after `init_world`, so it lands on this rank's
    device)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"profile {cfg.profile} runs on cuda, and no GPU is visible here")
    validate(EvalConfig(model=cfg.model, tasks=cfg.eval.tasks,
                        problems=Problems(limit=cfg.eval.limit,
                                          sample_seed=cfg.eval.sample_seed, chat=cfg.eval.chat),
                        execution=CodeExecution(allow_code_execution=allow_code_execution)))
    load_task("gsm8k", "train")  # distillation data and the selection prompts
    run_file = out / RUN_FILE
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())["config_hash"]
        except (OSError, ValueError, KeyError):
            raise UserError(f"{run_file} is unreadable; remove {out} to start over") from None
        if previous != cfg.config_hash():
            raise UserError(f"{out} holds a run of another config (hash {previous}, now "
                            f"{cfg.config_hash()}); choose another --out or remove it")
    elif out.exists() and any(p.name in (STEPS_DIR, CELLS_DIR) for p in out.iterdir()):
        raise UserError(f"{out} holds run artefacts without {RUN_FILE}; remove them first")
    base = load_base(cfg)
    n = base.model.cfg.n_layers
    if not 1 <= cfg.k <= n:
        raise UserError(f"k = {cfg.k} is out of range 1..{n} ({cfg.model} has {n} layers)")
    ensure_writable_dir(out)
    return base


# -- steps ----------------------------------------------------------------------------------------
class Runner:
    def __init__(self, cfg: ExperimentConfig, out: Path, allow_code_execution: bool,
                 base: LoadedModel):
        self.cfg = cfg
        self.out = Path(out).resolve()
        self.allow = allow_code_execution
        # Read once, at the start: the code this process runs. The checkout may move on while
        # a long run goes (a commit, an edit), and must not be what the results claim.
        self.provenance = provenance()
        self.world = current_world()  # under torchrun: rank 0 writes, sharded steps run on all
        self.store = StepStore(self.out, code_version(), self.provenance, self.world)
        self.base = base  # from `preflight`, loaded once
        self.precision = run_precision(cfg)
        # the inference stages' dtype (the base model's, from `load_base`)
        self.inference_dtype = inference_dtype(cfg.dtype, self.precision)
        self._work: Workload | None = None
        self._records: dict[str, tuple[Path, dict]] = {}  # step name -> (folder, record)

    # the measurements selectors read ---------------------------------------------------------
    def _workload(self) -> Workload:
        """One workload for every selection step: the verifier is traced once and shared."""
        if self._work is None:
            s = self.cfg.selection
            self._work = workload_for(self.base, s.prompts,
                                      SpecSettings(s.gamma, s.max_new_tokens), self.cfg.dtype,
                                      self.precision)
        return self._work

    def _selection_inputs(self) -> dict:
        s = self.cfg.selection
        return {"model": self.cfg.model, "dtype": self.cfg.dtype, "prompts": s.prompts,
                "gamma": s.gamma, "max_new_tokens": s.max_new_tokens,
                **precision_inputs(self.precision)}

    # Each step that makes a record (see `RECORDS`) has one signature: (seed, steps) -> its
    # folder, its record and those of the steps it read noted in `steps`.
    def diagnose(self, seed: int, steps: dict[str, dict]) -> Path:
        """RAD step 1: the redundancy profile, measured as the search's objective measures
        (once per profile: `seed` is unused)."""
        if "diagnose" not in self._records:
            objective = self.cfg.selection.objective
            inputs = {**self._selection_inputs(), "objective": objective}
            self._records["diagnose"] = self.store.run(
                "diagnose", inputs, lambda d: run_diagnose(self._workload(), d, objective),
                label="(all layers)")
        folder, steps["diagnose"] = self._records["diagnose"]
        return folder

    def select(self, seed: int, steps: dict[str, dict]) -> Path:
        """RAD step 2 for one seed, after the diagnosis that warm-starts it."""
        diag = self.diagnose(seed, steps)
        key = f"select-{seed}"
        if key not in self._records:
            s = self.cfg.selection
            inputs = {**self._selection_inputs(), "diagnose": steps["diagnose"]["key"],
                      "k": self.cfg.k, "trials": s.trials, "objective": s.objective,
                      "seed": seed, "sampler": s.sampler}
            self._records[key] = self.store.run(
                "select", inputs,
                lambda d: run_select(self._workload(), self.cfg.k, s.trials, s.objective, seed,
                                     d, None, diag / RECORDS["redundancy"].file, s.sampler),
                resumable=True, label=f"(k={self.cfg.k}, seed {seed})")  # the study resumes
        folder, steps["select"] = self._records[key]
        return folder

    def kl_profile(self, seed: int, steps: dict[str, dict]) -> Path:
        """The restore-one-layer KL profile (once per profile: `seed` is unused)."""
        if "kl-profile" not in self._records:
            cfg = self.cfg
            _, data_cfg = distill_configs(get_recipe("rad"), distill_settings(cfg))
            inputs = {"model": cfg.model, "teacher": cfg.teacher, "dtype": cfg.dtype,
                      "data": data_cfg.as_dict(), "rows": cfg.selection.kl_rows,
                      **precision_inputs(self.precision)}

            def fn(folder: Path) -> None:
                teacher = self.base if cfg.teacher in (None, cfg.model) else load_model(
                    cfg.teacher, self.inference_dtype, cfg.device)
                run_kl_profile(self.base, teacher, data_cfg, cfg.selection.kl_rows, folder,
                               cfg.dtype, self.precision)
            self._records["kl-profile"] = self.store.run("kl-profile", inputs, fn,
                                                         label="(all layers)")
        folder, steps["kl-profile"] = self._records["kl-profile"]
        return folder

    # a record kind's step (`RecordKind.step`) -> the method that runs it
    RECORD_STEPS = {"diagnose": diagnose, "select": select, "kl-profile": kl_profile}

    # per cell ---------------------------------------------------------------------------------
    def distill(self, cell: Cell, steps: dict[str, dict]) -> Path:
        recipe = get_recipe(cell.method)
        settings = distill_settings(self.cfg)
        train, data = distill_configs(recipe, settings)
        inputs = {"method": recipe.as_dict(), "model": self.cfg.model,
                  "teacher": self.cfg.teacher, "dtype": self.cfg.dtype, "seed": cell.seed,
                  "k": self.cfg.k, "distill": settings, **precision_inputs(self.precision)}
        selection = None
        reads = recipe.layer_selector.reads
        if reads is not None:
            kind = RECORDS[reads]
            selection = self.RECORD_STEPS[kind.step](self, cell.seed, steps) / kind.file
            inputs[kind.step] = steps[kind.step]["key"]
        k = None if recipe.layer_selector.replaces_all else self.cfg.k
        req = lambda folder: DistillRequest(  # noqa: E731
            cell.method, self.cfg.model, k, cell.seed, folder, train, data, self.cfg.teacher,
            selection, self.cfg.dtype, self.cfg.device)
        folder, steps["distill"] = self.store.run("distill", inputs,
                                                  lambda f: run_distill(req(f)),
                                                  resumable=True, label=cell.name,
                                                  every_rank=True)
        return folder

    def evaluate(self, model: str, model_key: str, label: str) -> tuple[Path, dict]:
        e = self.cfg.eval
        inputs = {"model": model_key, "eval": asdict(e), "dtype": self.cfg.dtype,
                  **precision_inputs(self.precision)}

        def fn(folder: Path) -> None:
            run_eval(EvalConfig(
                model=model, tasks=e.tasks,
                problems=Problems(limit=e.limit, task_limits=dict(e.limits),
                                  sample_seed=e.sample_seed, chat=e.chat),
                decoding=Decoding(batch_size=e.batch_size, max_gen_toks=e.max_gen_toks),
                execution=CodeExecution(allow_code_execution=self.allow),
                dtype=self.cfg.dtype, device=self.cfg.device, threads=self.cfg.threads,
                json_path=folder / "eval.json"), self.precision)
        return self.store.run("eval", inputs, fn, label=label, every_rank=True)

    def bench(self, model: str | None, model_key: str, label: str) -> tuple[Path, dict]:
        """Decode throughput of `model` (None: the base model alone) and the base model,
        interleaved window by window so both see the same machine load."""
        b = self.cfg.bench
        inputs = {"model": model_key, "bench": asdict(b), "dtype": self.cfg.dtype,
                  "device": self.cfg.device, "threads": self.cfg.threads,
                  **precision_inputs(self.precision)}

        def fn(folder: Path) -> None:
            other = (load_model(model, self.inference_dtype, self.cfg.device).model if model
                     else None)
            result = bench_pair(self.base.model, other, b.context, b.batch, b.new_tokens,
                                b.repeats)
            atomic_write_text(folder / "bench.json", json.dumps(result, indent=2))
        return self.store.run("bench", inputs, fn, label=label)

    def run_cell(self, cell: Cell) -> dict:
        recipe = get_recipe(cell.method)
        steps: dict[str, dict] = {}
        metrics: dict[str, float | None] = {}
        items: dict[str, dict] = {}  # per problem / held-out row: what paired statistics read
        layers: list[int] = []
        if recipe.trains:
            folder = self.distill(cell, steps)
            summary = json.loads((folder / "distill.json").read_text())
            layers = summary["layers"]
            metrics["heldout_kl"] = summary["heldout_kl_final"]
            metrics["heldout_kl_start"] = summary["heldout_kl_start"]
            metrics["train_wall_s"] = summary["train_wall_s"]
            items["heldout_kl"] = {"ids": list(range(len(summary["heldout_kl_rows"]))),
                                   "values": summary["heldout_kl_rows"]}
            model, model_key = str(folder), steps["distill"]["key"]
        else:  # the base model: KL to itself is 0 by definition, nothing trained
            metrics.update(heldout_kl=0.0, heldout_kl_start=0.0, train_wall_s=0.0)
            items["heldout_kl"] = {"ids": list(range(self.cfg.distill.n_heldout)),
                                   "values": [0.0] * self.cfg.distill.n_heldout}
            model, model_key = None, f"base:{self.cfg.model}"
        eval_dir, steps["eval"] = self.evaluate(model or self.cfg.model, model_key, cell.name)
        ev = json.loads((eval_dir / "eval.json").read_text())
        for task in self.cfg.eval.tasks:
            metrics[task] = ev["tasks"][task]["metrics"][TASKS.get(task).headline]
            items[task] = _items(TASKS.get(task), eval_dir / ev["tasks"][task]["samples_file"])
        metrics["eval_n"] = min(ev["tasks"][t]["n"] for t in self.cfg.eval.tasks)
        bench_dir, steps["bench"] = self.bench(model, model_key, cell.name)
        bench = json.loads((bench_dir / "bench.json").read_text())
        metrics.update(decode_tok_s=bench["model"]["decode_tok_s"],
                       base_decode_tok_s=bench["base"]["decode_tok_s"],
                       speedup=bench["speedup"], state_bytes=bench["model"]["state_bytes"],
                       base_state_bytes=bench["base"]["state_bytes"])
        result = {
            "method": cell.method, "seed": cell.seed, "recipe": recipe.as_dict(),
            "layers": layers, "metrics": metrics, "items": items,
            "steps": {name: {"folder": f"{STEPS_DIR}/{name}-{rec['key']}", "key": rec["key"],
                             "wall_s": rec["wall_s"], "cached": rec["cached"]}
                      for name, rec in steps.items()},
            "profile": self.cfg.profile, "config_hash": self.cfg.config_hash(),
            "dtype": self.cfg.dtype, "device": self.cfg.device,
            # what `auto` became on this machine, and why (every stage)
            "precision": self.precision.as_dict(),
            "threads": torch.get_num_threads(), "code_version": self.store.code,
            "provenance": self.provenance}
        if self.world.is_main:
            atomic_write_text(self.out / CELLS_DIR / f"{cell.name}.json",
                              json.dumps(result, indent=2))
        return result

    def run(self) -> list[dict]:
        cfg = self.cfg
        if self.world.is_main:
            atomic_write_text(self.out / RUN_FILE, json.dumps(run_manifest(cfg), indent=2))
        cells = plan_cells(cfg)
        results = []
        t0 = time.time()
        for i, cell in enumerate(cells, 1):
            if self.world.is_main:
                print(f"[{i}/{len(cells)}] {cell.name} ({time.time() - t0:.0f} s)", flush=True)
            results.append(self.run_cell(cell))
        return results
