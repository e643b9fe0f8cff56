"""`rad hybrid export`: a hybrid folder -> a standard transformers folder of a stock architecture
(config.json, model.safetensors, tokenizer, generation config, a model card), written atomically.
`--model` of every `rad` command loads it back (harness.models), bit-identical to its source."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from harness.common.errors import UserError
from harness.common.files import atomic_dir, ensure_writable_dir
from harness.common.provenance import provenance
from harness.models import load_model
from rad.method.export import EXPORT_TARGETS, ExportError, ExportTarget
from rad.method.replace import HybridConfig, HybridError, read_hybrid_config

WEIGHTS_FILE = "model.safetensors"


def export_hybrid_folder(src: Path, to: str, out: Path) -> Path:
    """Validate everything (target, source, output path), convert, then write all or nothing."""
    target = EXPORT_TARGETS.get(to)
    src, out = Path(src), Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; an export never writes over a folder (remove it "
                        "or choose another --out)")
    ensure_writable_dir(out.parent)
    try:
        hybrid = read_hybrid_config(src)
    except HybridError as e:
        raise UserError(f"{src} is not a hybrid folder ('rad hybrid build' or 'rad distill' "
                        f"writes one): {e}") from None
    lm = load_model(str(src))
    try:
        config, weights = target.to_hf(lm.model, hybrid)
    except ExportError as e:
        raise UserError(f"{target.architecture} cannot express {src} exactly: {e}") from None
    # Where the export came from, beside the hybrid's own provenance (in `rad_hybrid`).
    config["rad_export"] = {"source": str(src), "target": target.name, **provenance()}
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "generation_config.json").write_text(json.dumps(
            _generation_config(config, lm.pad_token_id), indent=2) + "\n")
        lm.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(src, target, hybrid, config))
    return out


def _generation_config(config: dict, pad: int) -> dict:
    # Greedy, as the harness evaluates; stock `generate` reads this file.
    return {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
            "pad_token_id": pad, "do_sample": False}


def _run_results(src: Path) -> list[dict]:
    """The cells of a `rad reproduce` run that trained this folder (RUN/steps/<distill-key>)."""
    steps, run = src.resolve().parent, src.resolve().parent.parent
    if steps.name != "steps" or not (run / "cells").is_dir():
        return []
    cells = []
    for path in sorted((run / "cells").glob("*.json")):
        try:
            cell = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if cell.get("steps", {}).get("distill", {}).get("folder") == f"steps/{src.name}":
            cells.append(cell)
    return cells


def model_card(src: Path, target: ExportTarget, hybrid: HybridConfig, config: dict) -> str:
    prov = hybrid.provenance
    recipe = prov.get("recipe") or {}
    summary = {}
    if (src / "distill.json").is_file():
        summary = json.loads((src / "distill.json").read_text())
    n = len(hybrid.layer_kinds)
    lines = [
        "---", "library_name: transformers", f"base_model: {hybrid.base_model}",
        "tags: [rad-harness, hybrid, mamba2]", "---", "",
        f"# {src.name}: an attention/Mamba2 hybrid of {hybrid.base_model}", "",
        f"A `{target.architecture}` (transformers' `{target.model_type}`) exported by "
        f"rad-harness `rad hybrid export --to {target.name}` from `{src}`. It computes what the "
        "harness's runtime computes for the source folder (tested: logits within 1e-4 in fp32, "
        "greedy tokens equal).", "",
        "| | |", "|---|---|",
        f"| base model / student | `{hybrid.base_model}` |",
        f"| teacher | `{prov.get('teacher', hybrid.base_model)}` |",
        f"| method | `{prov.get('method', 'none (built, not distilled)')}` "
        f"{recipe.get('description', '')} |",
        f"| attention layers replaced by Mamba2 | {len(hybrid.mamba_layers)} of {n}: "
        f"{hybrid.mamba_layers} |",
        f"| init | `{hybrid.init}` (seed {hybrid.seed}) |",
        f"| trained parameters | `{recipe.get('trainable', '-')}`, loss "
        f"`{recipe.get('loss', '-')}` |",
    ]
    if summary:
        s = summary.get("settings", {})
        lines += [
            f"| training budget | {summary['steps']} optimiser steps x "
            f"{summary['tokens_per_step']} tokens (seq_len {s.get('data', {}).get('seq_len')}, "
            f"teacher top-{s.get('data', {}).get('topk')} targets) |",
            f"| held-out KL(teacher ‖ model) | {summary['heldout_kl_start']:.4f} at step 0 -> "
            f"{summary['heldout_kl_final']:.4f} |"]
    for cell in _run_results(src):
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in cell["metrics"].items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool))
        lines.append(f"| harness results ({cell['profile']} profile, {cell['method']} seed "
                     f"{cell['seed']}) | {metrics} |")
    lines += [
        "", "## Use", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)", "```", "",
        "Stock lm-eval: `lm_eval --model hf --model_args pretrained=PATH ...`. vLLM lists "
        f"`{target.architecture}`; serving this folder with vLLM is untested.", "",
        "`config.json` also holds `rad_hybrid` (the harness's own description of the hybrid, "
        "which transformers ignores) so that rad-harness loads it back exactly, and "
        "`rad_export` (where and from which commit it was exported).", ""]
    return "\n".join(lines)
