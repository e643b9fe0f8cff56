"""`rad bench runtime`: greedy decode throughput of our runtime (eager, and compiled unless
`--compile off`) beside HF `generate`, measured side by side in one process (ratios, not
absolute times, are what these shared CPUs support). Compile time is measured on the warm-up
call and reported apart from the steady-state tok/s."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from harness.models import DTYPES, LoadedModel, load_model, resolve_model_folder
from harness.report.tables import bench_runtime_line
from rad.runtime import compile_mode
from rad.runtime.decode import generate, left_pad
from rad.runtime.static_step import STATS

BENCH_PROMPT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                "clips in May. How many clips did Natalia sell altogether in April and May?")


@dataclass
class RuntimeRecord:
    impl: str  # "hf", "rad" (the eager reference) or "rad-compiled"
    dtype: str
    batch: int
    new_tokens: int
    prompt_tokens: int
    tok_s: float  # batch * new_tokens / median wall time of one generate call (prefill included)
    tok_s_runs: list[float]
    weight_bytes: int
    same_tokens_as_hf: bool | None = None  # rad only: greedy tokens identical to HF's (to EOS)
    compile_s: float | None = None  # rad-compiled only: compiling, on the warm-up call
    device: str = "cpu"


def _median_time(fn: Callable[[], object], repeats: int,
                 sync: Callable[[], None] = lambda: None) -> tuple[float, list[float]]:
    fn()  # warm-up: allocator, kernel selection, lazily built tables, compiling
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def measure_stream_gbs(megabytes: int = 512, repeats: int = 5, device: str = "cpu") -> float:
    """Read bandwidth of this machine (GB/s), the ceiling for batch-1 decoding."""
    x = torch.ones(megabytes * 2**20 // 4, device=device)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    t, _ = _median_time(lambda: x.sum(), repeats, sync)
    return x.numel() * 4 / t / 1e9


def _weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def bench_runtime(model_name: str, batches: Sequence[int], dtypes: Sequence[str],
                  new_tokens: int, repeats: int = 3, device: str = "cpu") -> list[RuntimeRecord]:
    from transformers import AutoModelForCausalLM  # heavy; only this bench runs HF's model

    resolve_model_folder(model_name)  # bad names fail before the progress bar is drawn
    impls = ["hf", "rad"] + (["rad-compiled"] if compile_mode.compile_mode() != "off" else [])
    records: list[RuntimeRecord] = []
    bar = tqdm(total=len(impls) * len(dtypes) * len(batches), desc="bench runtime", unit="run")
    for dtype in dtypes:
        lm = load_model(model_name, dtype=dtype, device=device)
        hf = AutoModelForCausalLM.from_pretrained(lm.folder, dtype=DTYPES[dtype]).to(device)
        hf.eval()
        for batch in batches:
            records += _bench_batch(lm, hf, dtype, batch, new_tokens, repeats, impls)
            bar.update(len(impls))
            tqdm.write(bench_runtime_line([asdict(r) for r in records[-len(impls):]]))
    bar.close()
    return records


def _bench_batch(lm: LoadedModel, hf, dtype: str, batch: int, new_tokens: int, repeats: int,
                 impls: Sequence[str]) -> list[RuntimeRecord]:
    prompt = lm.tokenizer(BENCH_PROMPT)["input_ids"]
    device = lm.model.device
    ids, mask = (t.to(device) for t in left_pad([prompt] * batch, lm.pad_token_id))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    switch = compile_mode.compile_mode()

    def rad_run(mode: str):
        def run():
            compile_mode.set_compile_mode(mode)
            try:
                return generate(lm.model, ids, mask, new_tokens, stop_at_eos=False)
            finally:
                compile_mode.set_compile_mode(switch)
        return run

    @torch.inference_mode()
    def run_hf():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=lm.pad_token_id)

    runs = {"hf": run_hf, "rad": rad_run("off"), "rad-compiled": rad_run("on")}
    hf_tokens = run_hf()[:, ids.shape[1]:].tolist()
    out = []
    for impl in impls:
        compile_before = STATS.compile_s
        t, times = _median_time(runs[impl], repeats, sync)
        same = None
        if impl != "hf":
            same = _same_until_eos(runs[impl]().tokens, hf_tokens, set(lm.eos_token_ids))
        model = hf if impl == "hf" else lm.model
        out.append(RuntimeRecord(
            impl, dtype, batch, new_tokens, len(prompt), batch * new_tokens / t,
            [batch * new_tokens / r for r in times], _weight_bytes(model), same,
            STATS.compile_s - compile_before if impl == "rad-compiled" else None,
            str(device)))
    return out


def _same_until_eos(rad: list[list[int]], hf: list[list[int]], eos: set[int]) -> bool:
    """Rows agree up to rad's first EOS: HF's `min_new_tokens` (which keeps both timing the same
    token count) bans EOS and takes the runner-up there, so later tokens legitimately differ."""
    for a, b in zip(rad, hf, strict=True):
        stop = next((i for i, t in enumerate(a) if t in eos), len(a))
        if a[:stop] != b[:stop]:
            return False
    return True


def as_json(records: list[RuntimeRecord], stream_gbs: float, model: str) -> dict:
    out = []
    for r in records:
        d = asdict(r)
        # Batch-1 ceiling: every decoded token reads all weights once at the stream bandwidth.
        limit = stream_gbs * 1e9 / r.weight_bytes * r.batch
        d["bandwidth_limit_tok_s"] = limit if r.batch == 1 else None
        d["fraction_of_limit"] = r.tok_s / limit if r.batch == 1 else None
        out.append(d)
    return {"model": model, "stream_gbs": stream_gbs, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "compile": compile_mode.compile_mode(), "records": out}
