"""`rad distill`: recipe -> layers -> hybrid -> (alignment) -> distillation -> hybrid folder.

Every input is validated before anything is written. The run folder holds `distill_run.json`
(the settings, hashed), `train/` (checkpoint + curve while training) and, once finished, a hybrid
folder (`config.json`, `model.safetensors`, tokenizer) plus `curve.jsonl` and `distill.json`.
Re-running the same command resumes an unfinished run and does nothing for a finished one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.common.errors import UserError
from harness.common.files import atomic_write_text, ensure_writable_dir
from harness.common.provenance import provenance
from harness.experiment.distill_data import DataConfig, build_data, cached_targets
from harness.models import (
    TEACHERS,
    LoadedModel,
    load_model,
    require_same_tokenizer,
    teacher_cache_dir,
)
from rad.digest import json_digest
from rad.method.distill.align import align_mixers
from rad.method.distill.loop import CURVE, TrainConfig, TrainData, heldout_kl_rows, train
from rad.method.distill.parallel import choose
from rad.method.distill.trainable import TRAINABLE_POLICIES
from rad.method.recipes import Recipe, get_recipe
from rad.method.replace import build_hybrid, hybrid_config, save_hybrid
from rad.method.select import RECORDS, SelectionRequest
from rad.runtime.distributed import current_world
from rad.runtime.precision import resolve_precision

RUN_FILE = "distill_run.json"  # the run's settings and hash (not the runner's run.json)
SUMMARY_FILE = "distill.json"


def distill_configs(recipe: Recipe, settings: Mapping,
                    loss: str | None = None) -> tuple[TrainConfig, DataConfig]:
    """One flat settings mapping (a profile's `distill:`, or the CLI's flags) split into the loop's
    and the data's configs by field name; the recipe supplies the loss (unless overridden) and
    its CE weight. Unknown keys are an error."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"loss", "ce_weight"}
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = set(settings) - train_fields - data_fields
    if unknown:
        raise ValueError(f"unknown distillation settings {sorted(unknown)}")
    train_cfg = TrainConfig(**{k: v for k, v in settings.items() if k in train_fields},
                            loss=loss or recipe.loss, ce_weight=recipe.ce_weight)
    data_cfg = DataConfig(**{k: v for k, v in settings.items() if k in data_fields})
    return train_cfg, data_cfg


@dataclass
class DistillRequest:
    method: str
    model: str
    k: int | None
    seed: int
    out: Path
    train: TrainConfig
    data: DataConfig
    teacher: str | None = None  # None: self-distillation from --model
    selection: Path | None = None
    dtype: str = "fp32"
    device: str = "cpu"
    parallel: str = "auto"  # under torchrun: ddp, fsdp or auto (not hashed: any world resumes)

    def settings(self) -> dict:
        return {"method": self.method, "model": self.model, "k": self.k, "seed": self.seed,
                "teacher": self.teacher or self.model, "dtype": self.dtype,
                # device only when not the CPU: runs made before it existed keep their hash
                **({"device": self.device} if self.device != "cpu" else {}),
                "selection": str(self.selection) if self.selection else None,
                "train": self.train.as_dict(), "data": self.data.as_dict()}


def settings_hash(settings: dict) -> str:
    return json_digest(settings)


def _run_state(out: Path, digest: str) -> str:
    """'new', 'resume' or 'done'; a folder of another run is an error."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    run_file = out / RUN_FILE
    if not out.is_dir() or not run_file.exists():
        raise UserError(f"{out} exists and is not a distillation run folder; remove it or "
                        "choose another --out")
    try:
        previous = json.loads(run_file.read_text())["settings_hash"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{run_file} is unreadable; remove {out} to start over") from None
    if previous != digest:
        raise UserError(f"{out} holds a run with other settings (hash {previous}, now "
                        f"{digest}); remove it or choose another --out")
    return "done" if (out / SUMMARY_FILE).exists() else "resume"


def _layers(recipe: Recipe, req: DistillRequest, lm: LoadedModel) -> tuple[list[int], dict]:
    n = lm.model.cfg.n_layers
    selector = recipe.layer_selector
    k = req.k if req.k is not None else (n if selector.replaces_all else None)
    if k is None:
        raise UserError(f"method {recipe.name} needs --k (layers to replace, 1..{n})")
    if selector.replaces_all and k != n:
        raise UserError(f"method {recipe.name} replaces every layer: --k must be {n} (or "
                        "omitted)")
    if not 1 <= k <= n:
        raise UserError(f"--k {k} is out of range 1..{n} ({req.model} has {n} layers)")
    if selector.reads is None:
        layers = selector(SelectionRequest(n, k, req.seed))
        return layers, {"selector": recipe.selector, "seed": req.seed}
    kind = RECORDS[selector.reads]
    if req.selection is None:
        raise UserError(f"method {recipe.name} needs --selection {kind.file} from "
                        f"'{kind.command} --model {req.model}' (its selector reads it)")
    record = _read_record(req.selection, selector.reads, req.model, lm)
    try:
        layers = selector(SelectionRequest(n, k, req.seed, context={"record": record}))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{req.selection}: {e}") from None
    return layers, {"selector": recipe.selector, "seed": req.seed,
                    "selection": str(req.selection)}


def _record_kind(record: dict) -> str | None:
    """Which measurement a JSON record is; records written before `record` was stored are
    recognised by their fields."""
    if "record" in record:
        return record["record"]
    if "k" in record and "layers" in record:
        return "selection"
    entries = record.get("layers") or [{}]
    return "redundancy" if isinstance(entries[0], dict) and "acceptance_rate" in entries[0] \
        else None


def _read_record(path: Path, kind: str, model: str, lm: LoadedModel) -> dict:
    """The record a selector reads, checked: the right kind, for this model."""
    try:
        record = json.loads(Path(path).read_text())
        sel_n, sel_model = int(record["n_layers"]), str(record["model"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if _record_kind(record) != kind:
        raise UserError(f"{path} is not a {RECORDS[kind].file} record (from "
                        f"'{RECORDS[kind].command}')")
    n = lm.model.cfg.n_layers
    if sel_model in TEACHERS:  # by name or its cache folder; never build a teacher to compare
        folder = teacher_cache_dir(sel_model)
    else:
        folder = Path(sel_model)  # a local folder (a hub id compares by name only)
    same_model = sel_model == model or folder.resolve() == lm.folder.resolve()
    if not same_model or sel_n != n:
        raise UserError(f"{path} is a record for {sel_model} ({sel_n} layers), not for "
                        f"{model} ({n} layers)")
    return record


def _strategy(req: DistillRequest, recipe: Recipe, model, world) -> str:
    """What ran: single, ddp or fsdp (auto resolved as the loop resolved it)."""
    trained = TRAINABLE_POLICIES.get(recipe.trainable)(model)
    return choose(req.parallel, world, sum(p.numel() for p in trained.values()),
                  sum(p.numel() for p in model.parameters()))


def run_distill(req: DistillRequest, progress: bool = True) -> Path:
    recipe = get_recipe(req.method)
    if not recipe.trains:
        raise UserError(f"method {recipe.name} trains nothing (it is the reference row)")
    out = Path(req.out)
    settings = req.settings()
    digest = settings_hash(settings)
    world = current_world()  # torchrun: every rank runs this; rank 0 writes
    state = _run_state(out, digest)
    world.barrier()  # every rank has read the folder's state before rank 0 writes to it
    if state == "done":
        if world.is_main:
            print(f"{out}: this run is already complete (nothing to do)")
        return out
    if world.is_main:
        ensure_writable_dir(out.parent)

    t0 = time.time()
    student = load_model(req.model, dtype=req.dtype, device=req.device)
    teacher = student if req.teacher in (None, req.model) else load_model(
        req.teacher, dtype=req.dtype, device=req.device)
    require_same_tokenizer(student, teacher, "distillation compares token distributions, so "
                           "teacher and student must share one")
    layers, selection_info = _layers(recipe, req, student)
    # Everything is validated: from here on the run folder is written.
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if state == "new":
            atomic_write_text(out / RUN_FILE, json.dumps(
                {"settings": settings, "settings_hash": digest, "recipe": recipe.as_dict(),
                 "layers": layers}, indent=2))
    world.barrier()

    hybrid = build_hybrid(student.model, layers, recipe.init, req.seed)
    data = build_data(student.tokenizer, student.eos_token_ids[0], req.data)
    precision = resolve_precision(req.train.precision, student.model.device)
    train_t, held_t, targets_key = cached_targets(teacher.model, teacher.folder, data, req.data,
                                                  req.dtype, precision)
    alignment = None
    if recipe.align_steps:
        alignment = align_mixers(hybrid, teacher.model, data.train_ids, recipe.align_steps,
                                 seed=req.seed, precision=precision)
    curve = train(hybrid, recipe.trainable, req.train, req.seed,
                  TrainData(data.train_ids, train_t, data.heldout_ids, held_t), out / "train",
                  progress=progress, world=world, parallel=req.parallel)
    if not world.is_main:
        world.barrier()  # rank 0 writes the hybrid folder
        return out

    record = {**provenance(), "method": recipe.name, "recipe": recipe.as_dict(),
                  "teacher": teacher.name, "data_sha256": data.sha256,
                  "targets_key": targets_key, "settings_hash": digest}
    save_hybrid(hybrid, hybrid_config(hybrid, recipe.init, req.seed, req.model, record), out)
    student.tokenizer.save_pretrained(out)
    shutil.copyfile(out / "train" / CURVE, out / CURVE)
    summary = {"method": recipe.name, "layers": layers, "k": len(layers), "seed": req.seed,
               "steps": req.train.steps, "selection": selection_info,
               "tokens_per_step": req.train.batch_size * req.train.grad_accum * req.data.seq_len,
               "heldout_kl_start": curve[0]["heldout_kl"],
               "heldout_kl_final": curve[-1]["heldout_kl"],
               "heldout_kl_rows": heldout_kl_rows(hybrid, data.heldout_ids, held_t,
                                                  req.train.eval_batch_size),
               "train_wall_s": curve[-1]["wall_s"], "run_wall_s": time.time() - t0,
               "alignment": alignment, "settings": settings, "provenance": record,
               "world_size": world.size, "parallel": _strategy(req, recipe, hybrid, world),
               "precision": precision.as_dict()}
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2))  # written last: done
    world.barrier()
    return out
