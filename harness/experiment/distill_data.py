"""Distillation data: training-split documents packed into fixed-length token sequences, and the
teacher's top-k targets for them, computed once and cached on disk for every method and seed.

Sources (never evaluation problems):
- `gsm8k-train`: GSM8K train question + worked solution, as a chat exchange in the teacher's
  template (user asks, assistant answers);
- `python-stdlib`: top-level functions and classes of pure-Python standard-library modules
  (real code, available offline; HumanEval is the evaluation set so it is never used here).
Documents are split into held-out and training pools by a fixed data seed, so the held-out set
is the same for every method and seed; each pool is packed (documents joined by EOS) into
`seq_len`-token rows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import itertools
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from harness.common.errors import UserError
from harness.common.files import atomic_dir, cache_dir
from harness.tasks.data import load_task
from rad.digest import json_digest
from rad.method.distill.losses import TeacherTargets, teacher_targets, teacher_targets_fused
from rad.runtime.distributed import current_world
from rad.runtime.model import Decoder
from rad.runtime.precision import FP32, Precision, for_inference

# Pure-Python stdlib modules whose top-level definitions serve as the code source.
STDLIB_MODULES = ("bisect", "heapq", "textwrap", "fractions", "statistics", "string",
                  "colorsys", "calendar", "difflib", "shlex", "fnmatch", "graphlib", "queue",
                  "sched", "reprlib", "numbers", "glob", "base64", "quopri", "uu", "html",
                  "ipaddress", "operator", "functools", "copy", "pprint", "csv", "random")


@dataclass(frozen=True)
class DataConfig:
    seq_len: int = 128
    n_train: int = 64  # training sequences
    n_heldout: int = 16  # held-out sequences (KL curve)
    code_fraction: float = 0.25  # share of documents drawn from the code source
    topk: int = 64  # teacher log-probs kept per token
    tau: float = 1.0
    data_seed: int = 0  # fixes the document split and packing (not the training order)

    def __post_init__(self) -> None:
        if min(self.seq_len, self.n_train, self.n_heldout, self.topk) < 1:
            raise ValueError("seq_len, n_train, n_heldout and topk must be >= 1")
        if not 0.0 <= self.code_fraction <= 1.0:
            raise ValueError("code_fraction must be in [0, 1]")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DistillData:
    train_ids: torch.Tensor  # (n_train, seq_len)
    heldout_ids: torch.Tensor  # (n_heldout, seq_len)
    sha256: str  # of the token ids: what "the same tokens" means across methods


def gsm8k_documents(tokenizer) -> list[str]:
    out = []
    for ex in load_task("gsm8k", "train"):
        messages = [{"role": "user", "content": ex.question},
                    {"role": "assistant", "content": ex.solution}]
        if getattr(tokenizer, "chat_template", None):
            out.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            out.append(f"Question: {ex.question}\nAnswer: {ex.solution}")
    return out


def stdlib_documents() -> list[str]:
    docs = []
    for name in STDLIB_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue  # absent or compiled on this Python: skipped (the data hash records it)
        source = Path(spec.origin).read_text(encoding="utf-8")
        lines = source.splitlines(keepends=True)
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                segment = _segment(lines, node)
                if segment and len(segment) < 4000:
                    docs.append(segment)
    return docs


def _segment(lines: list[str], node: ast.stmt) -> str:
    """ast.get_source_segment for a top-level node, from pre-split lines (get_source_segment
    splits the whole file on every call: seconds per data build)."""
    last = lines[node.end_lineno - 1].encode()[:node.end_col_offset].decode()
    if node.lineno == node.end_lineno:
        return lines[node.lineno - 1].encode()[node.col_offset:node.end_col_offset].decode()
    first = lines[node.lineno - 1].encode()[node.col_offset:].decode()
    return first + "".join(lines[node.lineno:node.end_lineno - 1]) + last


def _pack(docs: Iterable[list[int]], seq_len: int, n_rows: int, eos: int,
          what: str) -> torch.Tensor:
    stream: list[int] = []
    for d in docs:
        stream += d + [eos]
        if len(stream) >= seq_len * n_rows:
            break
    if len(stream) < seq_len * n_rows:
        raise UserError(f"not enough {what} text for {n_rows} sequences of {seq_len} tokens")
    return torch.tensor(stream[: seq_len * n_rows]).view(n_rows, seq_len)


def build_data(tokenizer, eos: int, cfg: DataConfig) -> DistillData:
    rng = random.Random(cfg.data_seed)
    math_docs, code_docs = gsm8k_documents(tokenizer), stdlib_documents()
    rng.shuffle(math_docs)
    rng.shuffle(code_docs)
    n_code = round(cfg.code_fraction * len(math_docs)) if code_docs else 0
    docs = math_docs + code_docs[:n_code]  # the code share of the mix, by document count
    rng.shuffle(docs)
    # Documents are tokenised as packing reaches them (packing stops once its rows are full).
    encoded = (tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs)
    # held-out documents first (fixed by data_seed), training from the rest: disjoint
    held_tokens = cfg.n_heldout * cfg.seq_len
    held_docs: list[list[int]] = []
    used = 0
    for ids in encoded:
        if used >= held_tokens:
            encoded = itertools.chain([ids], encoded)
            break
        held_docs.append(ids)
        used += len(ids) + 1
    heldout = _pack(held_docs, cfg.seq_len, cfg.n_heldout, eos, "held-out")
    train = _pack(encoded, cfg.seq_len, cfg.n_train, eos, "training")
    digest = hashlib.sha256(train.numpy().tobytes() + heldout.numpy().tobytes()).hexdigest()
    return DistillData(train, heldout, digest)


# -- teacher targets, cached -------------------------------------------------------------------

def weights_digest(folder: Path) -> str:
    """sha256 over the folder's weight files (identifies the teacher's exact weights).
    Memoised per file identity: `rad distill-compare` asks once per cell."""
    files = sorted(Path(folder).resolve().glob("*.safetensors"))
    return _digest(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.cache
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for path, _, _ in files:
        h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@torch.no_grad()
def compute_targets(teacher: Decoder, ids: torch.Tensor, k: int, tau: float,
                    batch_size: int = 4, desc: str = "teacher targets",
                    precision: Precision = FP32) -> TeacherTargets:
    """The teacher's top-k targets for every row; under bf16 `precision` the forwards run a
    bf16 copy of the weights and the vocabulary pass is the fused one (both in
    `rad.runtime.precision`'s docstring), the fp32 reference otherwise; the log-normalisers are
    fp32 either way. Under torchrun the batches go round-robin over the ranks (the same batches
    as one process: the same numbers)."""
    world = current_world()
    n = (ids.shape[0] + batch_size - 1) // batch_size
    bar = tqdm(total=n, desc=desc, unit="batch", leave=False, disable=not world.is_main)
    model = for_inference(teacher, precision)
    vocab_pass = teacher_targets_fused if precision.bf16 else teacher_targets

    def one(b: int) -> TeacherTargets:
        logits = model(ids[b * batch_size:(b + 1) * batch_size].to(teacher.device))
        bar.update()
        if not precision.bf16:  # the reference as it always ran: the vocabulary pass on the CPU
            logits = logits.cpu()
        return vocab_pass(logits, k, tau).to(torch.device("cpu"))

    parts = world.map_batches(one, n)
    bar.close()
    return TeacherTargets(torch.cat([p.logp for p in parts]), torch.cat([p.index for p in parts]),
                          torch.cat([p.rest for p in parts]), tau)


def cached_targets(teacher: Decoder, teacher_folder: Path, data: DistillData,
                   cfg: DataConfig, dtype: str, precision: Precision = FP32,
                   ) -> tuple[TeacherTargets, TeacherTargets, str]:
    """(train targets, held-out targets, cache key): computed once per teacher x data x k x
    tau x dtype under $RAD_CACHE_DIR/targets/<key>, reused by every method and seed (under
    torchrun: computed sharded, written by rank 0, read by all)."""
    world = current_world()
    key_src = {"weights": weights_digest(teacher_folder), "data": data.sha256,
               "topk": cfg.topk, "tau": cfg.tau, "dtype": dtype, "format": 1}
    if precision.bf16:  # (fp32 targets keep the keys they always had)
        key_src["precision"] = precision.resolved
    key = json_digest(key_src, length=20)
    folder = cache_dir() / "targets" / key
    if not world.broadcast((folder / "targets.pt").exists()):
        train = compute_targets(teacher, data.train_ids, cfg.topk, cfg.tau,
                                desc="teacher targets (train)", precision=precision)
        held = compute_targets(teacher, data.heldout_ids, cfg.topk, cfg.tau,
                               desc="teacher targets (held-out)", precision=precision)
        if world.is_main:
            with atomic_dir(folder) as tmp:
                torch.save({"train": _as_dict(train), "heldout": _as_dict(held),
                            "key": key_src}, tmp / "targets.pt")
        world.barrier()
    blob = torch.load(folder / "targets.pt", weights_only=True)
    return _from_dict(blob["train"]), _from_dict(blob["heldout"]), key


def _as_dict(t: TeacherTargets) -> dict:
    return {"logp": t.logp, "index": t.index, "rest": t.rest, "tau": torch.tensor(t.tau)}


def _from_dict(d: dict) -> TeacherTargets:
    return TeacherTargets(d["logp"], d["index"], d["rest"], float(d["tau"]))
