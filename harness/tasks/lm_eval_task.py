"""Tasks evaluated through lm-eval: our shipped task YAMLs (harness/tasks/*.yaml) `include:` the
built-in definitions and repoint only the data at local JSONL. Before a run they are rendered
into a temporary folder with both paths made absolute (lm-eval's tasks folder, $RAD_DATA_DIR),
then evaluated by `lm_eval.simple_evaluate` on the `rad` backend.

`LmEvalTask` is the base of every such task; a subclass names its YAML stem and says how to read
lm-eval's metrics and samples (`metrics`, `fill_record`) and how its 0-shot prompt looks.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jinja2
import lm_eval
import lm_eval.tasks
import yaml
from lm_eval.tasks import TaskManager

from harness.common.errors import DataError, UserError
from harness.models import LoadedModel
from harness.tasks.base import TASKS, EvalConfig, Task
from harness.tasks.data import doc_indices, load_task, task_path
from harness.tasks.lm_backend import RadLM
from rad.runtime.distributed import current_world
from rad.runtime.prompts import render_prompt

DEFAULT_SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234,
                 "fewshot_random_seed": 1234}  # lm-eval's own defaults, recorded in results


@dataclass
class LmEvalSettings:
    chat: bool = False
    fewshot: int | None = None  # None: the task's own (5 / 4 few-shot, chat variants 0)
    limit: int | None = None
    sample_seed: int | None = None
    batch_size: int = 8
    max_gen_toks: int = 256


class LmEvalTask(Task):
    item_id = "doc_id"  # lm-eval's document index
    yaml_stem: str  # harness/tasks/<stem>.yaml (few-shot) and <stem>_chat.yaml (0-shot chat)
    has_chat = True  # False: no chat variant; the task is scored on plain text whatever --chat
    # True: lm-eval reads the parsed rows (`as_doc`, written beside the rendered YAML), not the
    # file: for data joined from two files (PIQA's labels) or fields a prompt must never see
    materialize = False

    def metrics(self, raw: dict[str, Any]) -> dict[str, float]:
        """The task's metrics from lm-eval's results row (the headline among them)."""
        raise NotImplementedError

    def fill_record(self, rec: dict[str, Any], sample: dict[str, Any]) -> None:
        """Add one lm-eval sample (one per document and filter) to its document's record."""
        raise NotImplementedError

    def plain_pair(self, doc: dict) -> tuple[str, str]:
        """(prompt, reference) in lm-eval's own 0-shot prompt format for this task."""
        raise NotImplementedError

    def chat_reference(self, doc: dict) -> str:
        raise NotImplementedError

    # -- shared by every lm-eval task -----------------------------------------------------------
    def validate(self, cfg: EvalConfig) -> None:
        with tempfile.TemporaryDirectory(prefix="rad-tasks-") as tmp:
            # missing data or built-ins fail here
            render_task(self.name, cfg.problems.chat, Path(tmp))

    def evaluate(self, lm: LoadedModel, cfg: EvalConfig) -> dict[str, Any]:
        p, d = cfg.problems, cfg.decoding
        return run_lm_eval_task(lm, self.name, LmEvalSettings(
            p.chat, p.fewshot, p.limit, p.sample_seed, d.batch_size, d.max_gen_toks))

    def docs(self, limit: int | None, sample_seed: int | None) -> list[dict]:
        examples = load_task(self.name, self.eval_split)
        idx = doc_indices(self.name, limit, sample_seed)
        return [self.as_doc(examples[i]) for i in (idx if idx is not None
                                                    else range(len(examples)))]

    def as_doc(self, example) -> dict:
        """A parsed example as lm-eval's docs name its fields."""
        return asdict(example)

    def reference_pairs(self, tokenizer, docs: list[dict],
                        chat: bool) -> list[tuple[str, str]]:
        if not (chat and self.has_chat):
            return [self.plain_pair(doc) for doc in docs]
        template = jinja2.Template(_task_yaml(task_file(self.name, True))["doc_to_text"])
        return [(render_prompt(tokenizer, template.render(**doc), True),
                 self.chat_reference(doc)) for doc in docs]


def lm_eval_task(name: str) -> LmEvalTask:
    task = TASKS.get(name)
    if not isinstance(task, LmEvalTask):
        lm_eval_names = [n for n, t in TASKS.items() if isinstance(t, LmEvalTask)]
        raise UserError(f"{name!r} is not an lm-eval task here; use one of {lm_eval_names}")
    return task


def task_file(task: str, chat: bool) -> str:
    spec = lm_eval_task(task)
    return f"{spec.yaml_stem}{'_chat' if chat and spec.has_chat else ''}.yaml"


class LikelihoodTask(LmEvalTask):
    """A zero-shot log-likelihood task (multiple choice or last word), as hybrid-distillation
    papers report them: no chat template, no few-shot, no generation. Each record says which
    choice won and whether it was right."""
    has_chat = False
    generates = False

    def validate(self, cfg: EvalConfig) -> None:
        if cfg.problems.fewshot:
            raise UserError(f"{self.label} is scored 0-shot here; drop --fewshot or evaluate it "
                            "apart")
        super().validate(cfg)

    def fill_record(self, rec: dict[str, Any], sample: dict[str, Any]) -> None:
        rec["output"] = [float(r[0][0]) for r in sample["resps"]]  # log-likelihood per choice
        rec["greedy"] = [bool(r[0][1]) for r in sample["resps"]]
        if len(rec["output"]) > 1:
            rec["choice"] = max(range(len(rec["output"])), key=rec["output"].__getitem__)
        rec["correct"] = bool(sample["acc"])


def _shipped(name: str) -> Path:
    return Path(str(resources.files("harness") / "tasks" / name))


def _task_yaml(name: str) -> dict:
    return yaml.safe_load(_shipped(name).read_text())


def lm_eval_tasks_dir() -> Path:
    return Path(lm_eval.tasks.__file__).parent


def render_task(task: str, chat: bool, dest: Path) -> str:
    """Write the task's YAML (and the shipped YAMLs it includes) into `dest` with absolute
    paths; return the lm-eval task name. One-line errors for missing built-ins or data."""
    name = task_file(task, chat)
    while name:
        cfg = _task_yaml(name)
        include = cfg.get("include")
        nxt = include if include and _shipped(include).is_file() else None
        if include and nxt is None:
            builtin = lm_eval_tasks_dir() / include
            if not builtin.is_file():
                raise UserError(f"the installed lm-eval {version('lm_eval')} lacks its built-in "
                                f"task file {include}; install a newer lm-eval "
                                "(tested with 0.4.13: pip install -U 'lm-eval>=0.4.13')")
            cfg["include"] = str(builtin)
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        if files:
            cfg["dataset_kwargs"]["data_files"] = {
                split: str(_checked_data(task, split, rel, dest)) for split, rel in files.items()}
        (dest / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
        name = nxt
    return _task_yaml(task_file(task, chat))["task"]


def _checked_data(task: str, split: str, rel: str, dest: Path) -> Path:
    """The file lm-eval reads for a data_files entry: the local file, strictly read once so bad
    rows fail here, or (a `materialize` task) its parsed rows written into `dest`."""
    path = task_path(task, split)
    if not str(path).endswith(rel):  # the YAML and the task's data must name the same file
        raise AssertionError(f"{rel} is not where {task}'s data reads {split} ({path})")
    try:
        examples = load_task(task, split)
    except DataError as e:
        raise DataError(f"{e} (see 'rad data check')") from None
    spec = lm_eval_task(task)
    if not spec.materialize:
        return path
    rows = dest / f"{task}-{split}.jsonl"
    rows.write_text("".join(json.dumps(spec.as_doc(ex)) + "\n" for ex in examples))
    return rows


def run_lm_eval_task(lm: LoadedModel, task: str, s: LmEvalSettings,
                     backend: Any = None) -> dict[str, Any]:
    """Evaluate one task; returns the task's entry: metrics, n, settings, per-sample records.
    `backend`: an lm-eval LM to use instead of RadLM on `lm` (tests feed known outputs)."""
    spec = lm_eval_task(task)
    if backend is None:
        backend = RadLM(loaded=lm, batch_size=s.batch_size, max_gen_toks=s.max_gen_toks)
    indices = doc_indices(task, s.limit, s.sample_seed)
    chat = s.chat and spec.has_chat
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="rad-tasks-") as tmp:
        name = render_task(task, s.chat, Path(tmp))
        results = lm_eval.simple_evaluate(
            model=backend, tasks=[name], num_fewshot=s.fewshot,
            samples={name: indices} if indices is not None else None,
            apply_chat_template=chat, fewshot_as_multiturn=chat,
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            log_samples=True, bootstrap_iters=1000, **DEFAULT_SEEDS)
    # Under torchrun our backend shards the batches and every rank holds every answer, but
    # lm-eval returns results only where LOCAL_RANK is 0: everyone takes rank 0's.
    results = current_world().broadcast(results)
    raw = {k: v for k, v in results["results"][name].items() if k != "alias"}
    config = results["configs"][name]
    records = _records(spec, results["samples"][name])
    return {
        "task": task, "lm_eval_task": name,
        "metrics": spec.metrics(raw),
        "n": len(records),
        "lm_eval_results": raw,
        "settings": {"num_fewshot": config.get("num_fewshot"), "chat": chat,
                     "limit": s.limit, "sample_seed": s.sample_seed,
                     "doc_indices": indices, "batch_size": s.batch_size,
                     "max_gen_toks": s.max_gen_toks, "decoding": "greedy",
                     "until": (config.get("generation_kwargs") or {}).get("until"),
                     "lm_eval_version": version("lm_eval"), **DEFAULT_SEEDS},
        "records": records,
    }


def _records(task: LmEvalTask, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per document (lm-eval logs one sample per document and filter)."""
    by_doc: dict[int, dict[str, Any]] = {}
    for smp in samples:
        rec = by_doc.setdefault(smp["doc_id"], {
            "doc_id": smp["doc_id"],
            "prompt": smp["arguments"][0][0],
            "output": smp["resps"][0][0],
            "target": smp["target"],
        })
        task.fill_record(rec, smp)
    return [by_doc[k] for k in sorted(by_doc)]
