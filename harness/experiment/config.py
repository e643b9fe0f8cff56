"""Experiment configs: one YAML file per profile (`harness/experiment/profiles/*.yaml`), loaded into
frozen dataclasses and validated before anything runs.

Validation is strict because a typo in a config silently changes an experiment: an unknown key is
an error that names it (`distill.stpes`), a value of the wrong type is an error, and names
(methods, tasks, prompt sources, objectives) are checked against their registries.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.common.errors import UserError
from harness.experiment.prompt_sets import parse_spec
from harness.models import DTYPES
from harness.tasks.base import TASKS
from rad.digest import json_digest
from rad.method.recipes import RECIPES
from rad.method.select import OBJECTIVES, SAMPLERS
from rad.registry import Registry
from rad.runtime.precision import PRECISIONS

PROFILES_DIR = Path(__file__).with_name("profiles")
# The shipped profiles, by name (any other YAML file is loaded by path).
PROFILES: Registry[Path] = Registry("profile")
for _path in sorted(PROFILES_DIR.glob("*.yaml")):
    PROFILES.register(_path.stem, _path)


@dataclass(frozen=True)
class SelectionSettings:
    """RAD steps 1-2 on the model: the redundancy profile and the Bayesian search (run once per
    seed: the search's seed is the cell's, so rad's spread includes selection variance), and
    the restore-one-layer KL profile the kl-guided baseline selects from."""
    prompts: str = "gsm8k-train:4"  # prompt set SOURCE:N for self-speculative decoding
    gamma: int = 4
    max_new_tokens: int = 32
    trials: int = 12
    objective: str = "accepted-length"  # also how diagnose measures (teacher-forced: simulated)
    sampler: str = "tpe"
    kl_rows: int = 8  # distillation training rows the kl-profile scores


@dataclass(frozen=True)
class DistillSettings:
    """One budget for every method: same steps, tokens, data and schedule."""
    steps: int = 60
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 5e-4
    warmup_steps: int = 5
    eval_every: int = 10
    ckpt_every: int = 20
    seq_len: int = 128
    n_train: int = 96
    n_heldout: int = 8
    topk: int = 64


@dataclass(frozen=True)
class EvalSettings:
    tasks: list[str] = field(default_factory=lambda: ["gsm8k", "math500", "humaneval"])
    limit: int | None = 10  # problems per task (first N, or N drawn with sample_seed); None: all
    limits: dict[str, int] = field(default_factory=dict)  # per-task overrides of limit
    sample_seed: int | None = None
    chat: bool = True  # 0-shot in the chat template (instruct models)
    max_gen_toks: int = 128
    batch_size: int = 8


@dataclass(frozen=True)
class BenchSettings:
    """Decode throughput of each cell's model and the base model, side by side in one step."""
    context: int = 4096
    batch: int = 8
    new_tokens: int = 8
    repeats: int = 3


@dataclass(frozen=True)
class GateSettings:
    """How far a current run may fall behind the baseline before `rad gate` fails it."""
    accuracy_drop: float = 0.0  # absolute, per task (accuracies of greedy decoding are exact)
    kl_increase: float = 0.05  # relative: current <= baseline * (1 + kl_increase)
    speedup_drop: float = 0.25  # relative: current ratio >= baseline ratio * (1 - speedup_drop)


@dataclass(frozen=True)
class ExperimentConfig:
    profile: str
    description: str
    model: str  # the model converted into hybrids (and the `teacher` row)
    methods: list[str]
    seeds: list[int]
    k: int  # attention layers replaced by Mamba2 (full-ssm replaces all)
    # Seeds for particular methods instead of `seeds` (e.g. more draws for random-swap).
    method_seeds: dict[str, list[int]] = field(default_factory=dict)
    teacher: str | None = None  # distillation teacher; None: self-distillation from `model`
    dtype: str = "fp32"
    # rad.runtime.precision, for every compute-bound stage: inference stages run its inference
    # dtype for `dtype`, distillation its autocast; auto resolves per device
    precision: str = "auto"
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    budget_minutes: int | None = None  # what the profile is sized for (documentation)

    def seeds_for(self, method: str) -> list[int]:
        return self.method_seeds.get(method, self.seeds)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        return json_digest(self.as_dict())


# -- strict loading ------------------------------------------------------------------------------
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is dict:
        key_tp, inner = typing.get_args(tp)
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, inner, f"{where}.{k}")
                for k, v in value.items()}
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    ok = (isinstance(value, bool) if tp is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float
          else isinstance(value, tp) and not (tp is int and isinstance(value, bool)))
    if not ok:
        raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


# Keys that moved: (section, old key) -> where it lives now (an old profile names the new place).
MOVED_KEYS = {(DistillSettings, "precision"): "the top-level 'precision' (one policy for every "
              "stage)"}


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        moved = MOVED_KEYS.get((cls, key))
        if moved:
            raise UserError(f"{where}: {key!r} moved to {moved}; set it there")
        if key not in fields:
            raise UserError(f"{where}: unknown key {key!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: missing key {name!r}")
    return cls(**kwargs)


def _check(cfg: ExperimentConfig, where: str) -> None:
    """Names against their registries, numbers against their ranges."""
    for m in cfg.methods:
        if m not in RECIPES:
            raise UserError(f"{where}: unknown method {m!r}; known: {', '.join(RECIPES.names())}")
    references = [m for m in cfg.methods if RECIPES.get(m).is_reference]
    if len(references) != 1:
        raise UserError(f"{where}: methods must include exactly one reference row "
                        f"(e.g. 'teacher'); got {references or 'none'}")
    if len(set(cfg.methods)) != len(cfg.methods) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"{where}: methods and seeds must not repeat")
    if not cfg.seeds:
        raise UserError(f"{where}: seeds needs at least one seed")
    for m, seeds in cfg.method_seeds.items():
        if m not in cfg.methods:
            raise UserError(f"{where}: method_seeds names {m!r}, which is not in methods")
        if not seeds or len(set(seeds)) != len(seeds):
            raise UserError(f"{where}: method_seeds.{m} needs distinct seeds")
    for t in cfg.eval.tasks:
        if t not in TASKS:
            raise UserError(f"{where}: unknown task {t!r}; known tasks: "
                            f"{', '.join(TASKS.names())}")
    for t, n in cfg.eval.limits.items():
        if t not in cfg.eval.tasks:
            raise UserError(f"{where}: eval.limits names {t!r}, which is not in eval.tasks")
        if n < 1:
            raise UserError(f"{where}: eval.limits.{t} must be >= 1; got {n}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"{where}: dtype must be one of {', '.join(DTYPES)}")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"{where}: precision must be one of {', '.join(PRECISIONS)}")
    if cfg.device not in ("cpu", "cuda"):
        raise UserError(f"{where}: device must be cpu or cuda")
    if cfg.selection.objective not in OBJECTIVES:
        raise UserError(f"{where}: selection.objective must be one of "
                        f"{', '.join(OBJECTIVES.names())}")
    if cfg.selection.sampler not in SAMPLERS:
        raise UserError(f"{where}: selection.sampler must be one of "
                        f"{', '.join(SAMPLERS.names())}")
    parse_spec(cfg.selection.prompts)
    positive = {"k": cfg.k, "threads": cfg.threads,
                **{f"selection.{k}": v for k, v in dataclasses.asdict(cfg.selection).items()
                   if k in ("gamma", "max_new_tokens", "trials", "kl_rows")},
                **{f"distill.{k}": v for k, v in dataclasses.asdict(cfg.distill).items()
                   if isinstance(v, int) and k != "warmup_steps"},
                **{f"eval.{k}": v for k, v in dataclasses.asdict(cfg.eval).items()
                   if k in ("limit", "max_gen_toks", "batch_size")},
                **{f"bench.{k}": v for k, v in dataclasses.asdict(cfg.bench).items()}}
    for name, v in positive.items():
        if v is not None and v < 1:
            raise UserError(f"{where}: {name} must be >= 1; got {v}")
    if min(dataclasses.asdict(cfg.gate).values()) < 0 or cfg.distill.lr <= 0:
        raise UserError(f"{where}: gate tolerances must be >= 0 and distill.lr > 0")
    if cfg.selection.kl_rows > cfg.distill.n_train:
        raise UserError(f"{where}: selection.kl_rows must be <= distill.n_train "
                        f"({cfg.distill.n_train})")


def profile_names() -> list[str]:
    return PROFILES.names()


def profile_path(name_or_path: str) -> Path:
    """A shipped profile by name, or any YAML file by path."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        return path
    if name_or_path not in PROFILES:
        raise UserError(f"unknown profile {name_or_path!r}; known: {', '.join(profile_names())} "
                        "(or give a path to a .yaml config)")
    return PROFILES.get(name_or_path)


def load_config(name_or_path: str) -> ExperimentConfig:
    path = profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{at}: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    cfg = _build(ExperimentConfig, data, path.name)
    _check(cfg, path.name)
    return cfg


def config_from_dict(data: dict, where: str = "config") -> ExperimentConfig:
    cfg = _build(ExperimentConfig, data, where)
    _check(cfg, where)
    return cfg
