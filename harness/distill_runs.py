"""`rad distill`: recipe -> layers -> hybrid -> (alignment) -> distillation -> hybrid folder.

Every input is validated before anything is written. The run folder holds `run.json` (the
settings, hashed), `train/` (checkpoint + curve while training) and, once finished, a hybrid
folder (`config.json`, `model.safetensors`, tokenizer) plus `curve.jsonl` and `distill.json`.
Re-running the same command resumes an unfinished run and does nothing for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from baselines.selectors import SelectionRequest, get_selector
from harness.cache import atomic_write_text, ensure_writable_dir
from harness.distill_data import DataConfig, build_data, cached_targets
from harness.errors import UserError
from harness.provenance import code_provenance
from harness.teachers import TEACHERS, LoadedModel, load_model, teacher_cache_dir
from rad.align import align_mixers
from rad.hybrid import build_hybrid, hybrid_config, save_hybrid
from rad.recipes import Recipe, get_recipe
from rad.train import CURVE, TrainConfig, train

RUN_FILE = "run.json"
SUMMARY_FILE = "distill.json"


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

    def settings(self) -> dict:
        return {"method": self.method, "model": self.model, "k": self.k, "seed": self.seed,
                "teacher": self.teacher or self.model, "dtype": self.dtype,
                # device only when not the CPU: runs made before it existed keep their hash
                **({"device": self.device} if self.device != "cpu" else {}),
                "selection": str(self.selection) if self.selection else None,
                "train": self.train.as_dict(), "data": self.data.as_dict()}


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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
    k = req.k if req.k is not None else (n if recipe.selector == "all" else None)
    if k is None:
        raise UserError(f"method {recipe.name} needs --k (layers to replace, 1..{n})")
    if recipe.selector == "all" and k != n:
        raise UserError(f"method {recipe.name} replaces every layer: --k must be {n} (or "
                        "omitted)")
    if not 1 <= k <= n:
        raise UserError(f"--k {k} is out of range 1..{n} ({req.model} has {n} layers)")
    if recipe.selector != "rad":
        layers = get_selector(recipe.selector)(SelectionRequest(n, k, req.seed))
        return layers, {"selector": recipe.selector, "seed": req.seed}
    if req.selection is None:
        raise UserError(f"method {recipe.name} needs --selection SELECTION.json from 'rad "
                        f"select --model {req.model} --k {k}' (the Bayesian search)")
    return _read_selection(req.selection, req.model, lm, k), {"selector": "rad",
                                                              "selection": str(req.selection)}


def _read_selection(path: Path, model: str, lm: LoadedModel, k: int) -> list[int]:
    try:
        sel = json.loads(Path(path).read_text())
        layers, sel_k, sel_n = list(sel["layers"]), int(sel["k"]), int(sel["n_layers"])
        sel_model = str(sel["model"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read selection {path}: {e}") from None
    n = lm.model.cfg.n_layers
    if sel_model in TEACHERS:  # by name or its cache folder; never build a teacher to compare
        folder = teacher_cache_dir(sel_model)
    else:
        folder = Path(sel_model)  # a local folder (a hub id compares by name only)
    same_model = sel_model == model or folder.resolve() == lm.folder.resolve()
    if not same_model or sel_n != n:
        raise UserError(f"{path} is a selection for {sel_model} ({sel_n} layers), not for "
                        f"{model} ({n} layers)")
    if sel_k != k or len(layers) != k:
        raise UserError(f"{path} selects k={sel_k} layers; --k is {k}")
    return sorted(layers)


def _check_tokenizers(student: LoadedModel, teacher: LoadedModel) -> None:
    if (student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab()
            or student.model.cfg.vocab_size != teacher.model.cfg.vocab_size):
        raise UserError(f"teacher {teacher.name} and student {student.name} have different "
                        "tokenizers; distillation compares token distributions, so they must "
                        "match")


def run_distill(req: DistillRequest, progress: bool = True) -> Path:
    try:
        recipe = get_recipe(req.method)
    except KeyError as e:
        raise UserError(str(e).strip("'\"")) from None
    if not recipe.trains:
        raise UserError(f"method {recipe.name} trains nothing (it is the reference row)")
    out = Path(req.out)
    settings = req.settings()
    digest = settings_hash(settings)
    state = _run_state(out, digest)
    if state == "done":
        print(f"{out}: this run is already complete (nothing to do)")
        return out
    ensure_writable_dir(out.parent)

    t0 = time.time()
    student = load_model(req.model, dtype=req.dtype, device=req.device)
    teacher = student if req.teacher in (None, req.model) else load_model(
        req.teacher, dtype=req.dtype, device=req.device)
    _check_tokenizers(student, teacher)
    layers, selection_info = _layers(recipe, req, student)
    # Everything is validated: from here on the run folder is written.
    out.mkdir(parents=True, exist_ok=True)
    if state == "new":
        atomic_write_text(out / RUN_FILE, json.dumps(
            {"settings": settings, "settings_hash": digest, "recipe": recipe.as_dict(),
             "layers": layers}, indent=2))

    hybrid = build_hybrid(student.model, layers, recipe.init, req.seed)
    data = build_data(student.tokenizer, student.eos_token_ids[0], req.data)
    train_t, held_t, targets_key = cached_targets(teacher.model, teacher.folder, data, req.data,
                                                  req.dtype)
    alignment = None
    if recipe.align_steps:
        alignment = align_mixers(hybrid, teacher.model, data.train_ids, recipe.align_steps,
                                 seed=req.seed)
    curve = train(hybrid, recipe.trainable, req.train, req.seed, data.train_ids, train_t,
                  data.heldout_ids, held_t, out / "train", progress=progress)

    provenance = {**code_provenance(), "method": recipe.name, "recipe": recipe.as_dict(),
                  "teacher": teacher.name, "data_sha256": data.sha256,
                  "targets_key": targets_key, "settings_hash": digest}
    save_hybrid(hybrid, hybrid_config(hybrid, recipe.init, req.seed, req.model, provenance),
                out)
    student.tokenizer.save_pretrained(out)
    shutil.copyfile(out / "train" / CURVE, out / CURVE)
    summary = {"method": recipe.name, "layers": layers, "k": len(layers), "seed": req.seed,
               "steps": req.train.steps, "selection": selection_info,
               "tokens_per_step": req.train.batch_size * req.train.grad_accum * req.data.seq_len,
               "heldout_kl_start": curve[0]["heldout_kl"],
               "heldout_kl_final": curve[-1]["heldout_kl"],
               "train_wall_s": curve[-1]["wall_s"], "run_wall_s": time.time() - t0,
               "alignment": alignment, "settings": settings, "provenance": provenance}
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2))  # written last: done
    return out
