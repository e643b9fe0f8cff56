"""`rad hybrid build`: a teacher (or hybrid) plus a layer list -> a hybrid folder on disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.common.errors import ModelError, UserError
from harness.common.files import atomic_dir, ensure_writable_dir
from harness.common.provenance import provenance
from harness.models import load_model, parse_dtype
from rad.method.replace import INITS, HybridError, build_hybrid, hybrid_config, save_hybrid


def check_new_folder(out: Path) -> None:
    """An output folder must be new (or empty): a hybrid is never written over another one."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; remove it or choose "
                        "another --out")
    ensure_writable_dir(out.parent)


def build_hybrid_folder(model: str, layers: Sequence[int], init: str, out: Path, seed: int = 0,
                        dtype: str = "fp32") -> Path:
    """Validate everything, build the hybrid, then write it atomically (all or nothing)."""
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; choose one of {', '.join(INITS.names())}")
    if not layers:
        raise UserError("--layers needs at least one layer index")
    parse_dtype(dtype)
    check_new_folder(out)
    lm = load_model(model, dtype=dtype)
    try:
        hybrid = build_hybrid(lm.model, layers, init, seed)
    except HybridError as e:
        raise UserError(f"{e} ({model} has {lm.model.cfg.n_layers} layers)") from None
    except ValueError as e:  # the mixer cannot be sized from this architecture
        raise ModelError(f"cannot build a Mamba2 mixer for {model}: {e}") from None
    cfg = hybrid_config(hybrid, init, seed, model,
                        {**provenance(), "source_folder": str(lm.folder), "dtype": dtype,
                         "replaced_layers": sorted(layers)})
    out = Path(out)
    if out.exists():
        out.rmdir()  # empty (checked above); atomic_dir renames a complete folder into place
    with atomic_dir(out) as tmp:
        save_hybrid(hybrid, cfg, tmp)
        lm.tokenizer.save_pretrained(tmp)
    return out
