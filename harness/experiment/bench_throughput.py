"""`rad bench throughput` and the runner's bench step: prefill and decode tokens/s,
inference-state bytes and peak memory of a model (and, with `--with-hybrids`, its 50%
uniform-interleave hybrid and its full-SSM model, timed side by side in the same run, since only
ratios are trustworthy on shared machines).

How each (model, context, batch) cell is timed:
- prefill: one warm-up, then `repeats` timed prefills of `context` random tokens; at most
  `prefill_max_tokens` tokens per prefill, so long contexts prefill fewer rows (`prefill_batch`);
- decode: the cache of one prefilled row is replicated to `batch` rows (decode reads the same
  bytes whatever the values are; this avoids prefilling 8 x 8192 tokens per model), then a
  warm-up and `repeats` windows of `new_tokens` greedy steps; median, min and max tokens/s.
Wall time comes from CUDA events on a GPU and perf_counter on CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from harness.common.provenance import provenance
from rad.method.replace import build_hybrid
from rad.method.select import SelectionRequest, get_selector
from rad.runtime.cache import replicate
from rad.runtime.compile_mode import compile_mode
from rad.runtime.decode import decode_steps, greedy, prefill
from rad.runtime.model import Decoder
from rad.runtime.static_step import STATS

WARMUP_STEPS = 4


@dataclass
class ThroughputRecord:
    model: str  # label: teacher, hybrid-50, full-ssm, or the model argument
    mamba_layers: int
    context: int
    batch: int
    prefill_batch: int
    prefill_tok_s: float  # median over repeats
    prefill_tok_s_runs: list[float]
    decode_tok_s: float  # median over windows, batch * new_tokens / window time
    decode_tok_s_runs: list[float]
    new_tokens: int
    state_bytes: int  # inference state for `batch` rows of `context` tokens
    peak_rss_bytes: int | None  # process peak RSS during this cell (CPU), None if unknown
    peak_cuda_bytes: int | None  # torch.cuda.max_memory_allocated during this cell (GPU)
    compile_s: float = 0.0  # compiling the decode step, on the warm-up (not in decode tok/s)


def comparison_models(model: Decoder, seed: int = 0) -> list[tuple[str, Decoder]]:
    """The model, its uniform 50% hybrid (MambaInLlama's interleave) and its full-SSM model."""
    n = model.cfg.n_layers
    half = get_selector("uniform")(SelectionRequest(n, n // 2, seed))
    return [("teacher", model),
            ("hybrid-50", build_hybrid(model, half, "kqvo", seed)),
            ("full-ssm", build_hybrid(model, list(range(n)), "kqvo", seed))]


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    if device.type == "cuda":
        def cuda_time(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        return cuda_time

    def wall_time(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return wall_time


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 resets the VmHWM peak of this process
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _decoder(model: Decoder, row: torch.Tensor, batch: int, steps: int) -> Callable[[int], None]:
    """Prefill one (1, context) row, replicate its cache to `batch` rows, and return a function
    that decodes n greedy steps on it (room for `steps` steps in all)."""
    context = row.shape[1]
    one = model.allocate_cache(1, context + steps)
    logits = prefill(model, row, None, one)
    cache = one if batch == 1 else model.allocate_cache(batch, context + steps)
    if batch > 1:
        replicate(one, cache)
        del one
    token = greedy(logits).expand(batch).contiguous()

    def decode(n: int) -> None:
        nonlocal token
        token = decode_steps(model, token, cache, n)
    return decode


@torch.inference_mode()
def bench_pair(base: Decoder, other: Decoder | None, context: int, batch: int, new_tokens: int,
               repeats: int, seed: int = 0) -> dict:
    """Decode tok/s of `other` beside `base` (None: `base` alone), from one random prefilled
    context each, timing windows interleaved (base, other, base, ...) so both see the same
    machine load; speedup = median of the per-window ratios."""
    timed = _timer(base.device)
    ids = torch.randint(0, base.cfg.vocab_size, (1, context),
                        generator=torch.Generator().manual_seed(seed)).to(base.device)
    models = {"base": base, **({"model": other} if other is not None else {})}
    decoders = {name: _decoder(m, ids, batch, WARMUP_STEPS + repeats * new_tokens)
                for name, m in models.items()}
    for decode in decoders.values():
        decode(WARMUP_STEPS)
    runs: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, decode in decoders.items():
            runs[name].append(batch * new_tokens / timed(lambda d=decode: d(new_tokens)))
    result = {name: {"decode_tok_s": statistics.median(r), "decode_tok_s_runs": r,
                     "state_bytes": models[name].state_bytes(batch, context),
                     "mamba_layers": sum(k == "mamba2" for k in models[name].layer_kinds)}
              for name, r in runs.items()}
    result.setdefault("model", result["base"])
    ratios = [m / b for m, b in zip(runs.get("model", runs["base"]), runs["base"], strict=True)]
    return {**result, "speedup": statistics.median(ratios), "speedup_runs": ratios,
            "context": context, "batch": batch, "new_tokens": new_tokens, "repeats": repeats,
            "threads": torch.get_num_threads(), "device": str(base.device)}


@torch.inference_mode()
def bench_cell(label: str, model: Decoder, context: int, batch: int, new_tokens: int,
               repeats: int, prefill_max_tokens: int, seed: int = 0) -> ThroughputRecord:
    device = model.device
    timed = _timer(device)
    vocab = model.cfg.vocab_size
    gen = torch.Generator().manual_seed(seed)
    tracked = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    prefill_batch = max(1, min(batch, prefill_max_tokens // context))
    ids = torch.randint(0, vocab, (prefill_batch, context), generator=gen).to(device)

    def run_prefill():
        prefill(model, ids, None, model.allocate_cache(prefill_batch, context))

    run_prefill()  # warm-up
    prefill_runs = [prefill_batch * context / timed(run_prefill) for _ in range(repeats)]

    decode = _decoder(model, ids[:1], batch, WARMUP_STEPS + repeats * new_tokens)
    compile_before = STATS.compile_s
    decode(WARMUP_STEPS)
    compile_s = STATS.compile_s - compile_before
    decode_runs = [batch * new_tokens / timed(lambda: decode(new_tokens)) for _ in range(repeats)]
    n_mamba = sum(k == "mamba2" for k in model.layer_kinds)
    return ThroughputRecord(
        label, n_mamba, context, batch, prefill_batch, statistics.median(prefill_runs),
        prefill_runs, statistics.median(decode_runs), decode_runs, new_tokens,
        model.state_bytes(batch, context), _peak_rss() if tracked else None,
        torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None, compile_s)


def bench_throughput(models: Sequence[tuple[str, Decoder]], contexts: Sequence[int],
                     batches: Sequence[int], new_tokens: int, repeats: int,
                     prefill_max_tokens: int) -> list[ThroughputRecord]:
    """Every (context, batch) cell for every model, the models interleaved per cell."""
    cells = [(c, b) for c in contexts for b in batches]
    records = []
    bar = tqdm(total=len(cells) * len(models), desc="bench throughput", unit="cell")
    for context, batch in cells:
        for label, model in models:
            bar.set_postfix_str(f"{label} ctx {context} batch {batch}")
            rec = bench_cell(label, model, context, batch, new_tokens, repeats,
                             prefill_max_tokens)
            records.append(rec)
            bar.update()
            tqdm.write(f"{label:10s} ctx {context:6d} batch {batch:2d}: prefill "
                       f"{rec.prefill_tok_s:8.1f} tok/s, decode {rec.decode_tok_s:7.1f} tok/s, "
                       f"state {rec.state_bytes / 2**20:8.1f} MiB")
    bar.close()
    return records


def as_json(records: list[ThroughputRecord], model: str, dtype: str, device: str,
            settings: dict) -> dict:
    return {"model": model, "dtype": dtype, "device": device,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "compile": compile_mode(), "settings": settings, "warmup_steps": WARMUP_STEPS,
            "provenance": provenance(),
            "records": [asdict(r) for r in records]}
