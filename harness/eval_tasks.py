"""GSM8K and MATH-500 through lm-eval: our shipped task YAMLs (harness/tasks/) `include:` the
built-in definitions and repoint only the data at local JSONL. Before a run they are rendered
into a temporary folder with both paths made absolute (lm-eval's tasks folder, $RAD_DATA_DIR),
then evaluated by `lm_eval.simple_evaluate` on the `rad` backend.
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from harness.data import load_task, task_path
from harness.errors import DataError, UserError
from harness.teachers import LoadedModel

LM_EVAL_TASKS = ("gsm8k", "math500")
DEFAULT_SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234,
                 "fewshot_random_seed": 1234}  # lm-eval's own defaults, recorded in results


def task_file(task: str, chat: bool) -> str:
    return f"rad_{task}{'_chat' if chat else ''}.yaml"


def _shipped(name: str) -> Path:
    return Path(str(resources.files("harness") / "tasks" / name))


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks
    return Path(lm_eval.tasks.__file__).parent


def render_task(task: str, chat: bool, dest: Path) -> str:
    """Write the task's YAML (and the shipped YAMLs it includes) into `dest` with absolute
    paths; return the lm-eval task name. One-line errors for missing built-ins or data."""
    name = task_file(task, chat)
    while name:
        cfg = yaml.safe_load(_shipped(name).read_text())
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
                split: str(_checked_data(task, split, rel)) for split, rel in files.items()}
        (dest / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
        name = nxt
    return yaml.safe_load(_shipped(task_file(task, chat)).read_text())["task"]


def _checked_data(task: str, split: str, rel: str) -> Path:
    """The local file behind a data_files entry, strictly read once so bad rows fail here."""
    path = task_path(task, split)
    if not str(path).endswith(rel):  # the YAML and harness.data must name the same file
        raise AssertionError(f"{rel} is not where harness.data reads {task}/{split} ({path})")
    try:
        load_task(task, split)
    except DataError as e:
        raise DataError(f"{e} (see 'rad data check')") from None
    return task_path(task, split)


def doc_indices(task: str, limit: int | None, sample_seed: int | None) -> list[int] | None:
    """Which test rows to evaluate: None (all), the first `limit`, or `limit` drawn with
    `sample_seed` (sorted, so the order is still file order)."""
    if limit is None:
        return None
    n = len(load_task(task, "test"))
    if sample_seed is None:
        return list(range(min(limit, n)))
    return sorted(random.Random(sample_seed).sample(range(n), min(limit, n)))


@dataclass
class LmEvalSettings:
    chat: bool = False
    fewshot: int | None = None  # None: the task's own (5 / 4 few-shot, chat variants 0)
    limit: int | None = None
    sample_seed: int | None = None
    batch_size: int = 8
    max_gen_toks: int = 256


def run_lm_eval_task(lm: LoadedModel, task: str, s: LmEvalSettings,
                     backend: Any = None) -> dict[str, Any]:
    """Evaluate one task; returns the task's entry: metrics, n, settings, per-sample records.
    `backend`: an lm-eval LM to use instead of RadLM on `lm` (tests feed known outputs)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness.lm_backend import RadLM

    if task not in LM_EVAL_TASKS:
        raise UserError(f"{task!r} is not an lm-eval task here; use one of {LM_EVAL_TASKS}")
    if backend is None:
        backend = RadLM(loaded=lm, batch_size=s.batch_size, max_gen_toks=s.max_gen_toks)
    indices = doc_indices(task, s.limit, s.sample_seed)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="rad-tasks-") as tmp:
        name = render_task(task, s.chat, Path(tmp))
        results = lm_eval.simple_evaluate(
            model=backend, tasks=[name], num_fewshot=s.fewshot,
            samples={name: indices} if indices is not None else None,
            apply_chat_template=s.chat, fewshot_as_multiturn=s.chat,
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            log_samples=True, bootstrap_iters=1000, **DEFAULT_SEEDS)
    raw = {k: v for k, v in results["results"][name].items() if k != "alias"}
    config = results["configs"][name]
    records = _records(task, results["samples"][name])
    return {
        "task": task, "lm_eval_task": name,
        "metrics": _headline(task, raw),
        "n": len(records),
        "lm_eval_results": raw,
        "settings": {"num_fewshot": config.get("num_fewshot"), "chat": s.chat,
                     "limit": s.limit, "sample_seed": s.sample_seed,
                     "doc_indices": indices, "batch_size": s.batch_size,
                     "max_gen_toks": s.max_gen_toks, "decoding": "greedy",
                     "until": config.get("generation_kwargs", {}).get("until"),
                     "lm_eval_version": version("lm_eval"), **DEFAULT_SEEDS},
        "records": records,
    }


def _headline(task: str, raw: dict[str, Any]) -> dict[str, float]:
    if task == "gsm8k":
        return {"exact_match": raw["exact_match,strict-match"],
                "exact_match_flexible": raw["exact_match,flexible-extract"]}
    return {"math_verify": raw["math_verify,none"], "exact_match": raw["exact_match,none"]}


def _records(task: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per document (lm-eval logs one sample per document and filter)."""
    by_doc: dict[int, dict[str, Any]] = {}
    for smp in samples:
        rec = by_doc.setdefault(smp["doc_id"], {
            "doc_id": smp["doc_id"],
            "prompt": smp["arguments"][0][0],
            "output": smp["resps"][0][0],
            "target": smp["target"],
        })
        filt = smp["filter"]
        if task == "gsm8k":
            key = "" if filt == "strict-match" else "_flexible"
            rec["extracted" + key] = smp["filtered_resps"][0]
            rec["correct" + key] = bool(smp["exact_match"])
        else:
            from lm_eval.tasks.minerva_math.utils import (
                get_unnormalized_answer,
                normalize_final_answer,
            )
            rec["extracted"] = normalize_final_answer(get_unnormalized_answer(rec["output"]))
            rec["target"] = smp["doc"]["answer"]
            rec["correct"] = bool(smp["math_verify"])
            rec["exact_match"] = bool(smp["exact_match"])
    return [by_doc[k] for k in sorted(by_doc)]
