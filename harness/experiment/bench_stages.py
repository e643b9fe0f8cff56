"""`rad bench stages`: every compute-bound stage of a run, per precision, side by side in one
process: teacher targets, one SSM-only distillation step of a k-layer hybrid, likelihood
scoring and compiled greedy decode at batch 1 and 8; with the machine's GEMM peak (fp32 and
bf16) and read bandwidth measured in the same run, so each stage's tok/s comes with its ratio
to fp32 and its fraction of what the machine allows. Each stage runs as the real run runs
it: bf16 targets, scoring and decode on a bf16 copy of the weights (targets with the fused
vocabulary pass), the bf16 step under autocast with the frozen weights cast once
(`rad.runtime.precision`). Decode also runs the weight-only int8 option beside bf16
(`rad.runtime.linear.int8_weight_only`).

Limits: a forward costs 2N FLOPs per token (N = parameters, the tied head counted once), an
SSM-only step about 4N + 2T (forward, activation gradients, the T trained parameters'
gradients); decoding reads the weights once per step, so batch b allows b x bandwidth /
weight bytes tokens per second.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from harness.experiment.bench_runtime import measure_stream_gbs
from harness.experiment.bench_throughput import bench_pair
from harness.experiment.distill_data import compute_targets
from harness.experiment.estimate import params, weight_bytes
from harness.tasks.batching import score_continuations
from rad.method.distill.loop import Progress, TrainConfig, lr_factor, optimizer_step
from rad.method.distill.parallel import Parallel
from rad.method.distill.trainable import set_trainable
from rad.method.replace import build_hybrid
from rad.method.select import SELECTORS, SelectionRequest
from rad.runtime.distributed import SINGLE
from rad.runtime.linear import Linear, int8_weight_only
from rad.runtime.model import Decoder
from rad.runtime.precision import (
    FrozenCasts,
    Precision,
    for_inference,
    native_bf16,
    resolve_precision,
)

STAGES = ("targets", "distill", "likelihood", "decode-b1", "decode-b8")


@dataclass
class StageRecord:
    stage: str
    precision: str  # resolved: fp32 | bf16, or int8-weights (decode: int8 weights, bf16 math)
    tok_s: float
    tok_s_runs: list[float]
    limit_tok_s: float  # what the machine's measured peak allows
    fraction_of_limit: float
    ratio_to_fp32: float | None = None


def _median_rate(fn: Callable[[], object], tokens: int, repeats: int) -> list[float]:
    fn()  # warm-up: allocator, kernels, compiled graphs
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(tokens / (time.perf_counter() - t0))
    return rates


def gemm_peak(dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of a (2048 x 576) @ (576 x 1536) product, the embedded teacher's MLP shape."""
    a, b = torch.randn(2048, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    c = torch.empty(2048, 1536, dtype=dtype)  # one output buffer: time the product, not malloc

    def products():
        for _ in range(8):
            torch.matmul(a, b, out=c)
    rates = _median_rate(products, 8 * 2 * 2048 * 576 * 1536, repeats)
    return statistics.median(rates)


def _stage_runs(model: Decoder, p: Precision, ids: torch.Tensor, pairs, pad_id: int,
                layers: list[int], peak: float, stream: float, repeats: int,
                ) -> dict[tuple[str, str], tuple[list[float], float]]:
    """(stage, precision label) -> (tok/s of each run, the limit) at precision `p`."""
    batch, seq_len = ids.shape
    n = params(model)
    targets = compute_targets(model, ids, 64, 1.0, batch_size=batch, precision=p)
    hybrid = build_hybrid(model, layers, "skip", seed=0)
    trained = set_trainable(hybrid, "ssm-only")
    par = Parallel(hybrid, list(trained.items()), "auto", SINGLE)
    opt = torch.optim.AdamW([t for _, t in par.named], lr=1e-4)
    cfg = TrainConfig(steps=1000, batch_size=batch, precision=p.requested)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    state = Progress()
    n_trained = sum(t.numel() for t in trained.values())
    casts = FrozenCasts(hybrid, p)  # once per run, as `train` makes them
    scorer = for_inference(model, p)  # as `rad eval --precision` loads it

    def distill_step():
        optimizer_step(par, opt, sched, cfg, 0, ids, targets, state, p, casts)

    def likelihood():
        score_continuations(scorer, pairs, pad_id, batch_size=len(pairs))

    def targets_pass():  # on the bf16 copy a run makes once (for_inference) per targets pass
        compute_targets(scorer, ids, 64, 1.0, batch_size=batch, precision=p)

    # a shared likelihood context is prefilled once: count it once
    scored = (sum(len(c) for c in {tuple(c) for c, _ in pairs})
              + sum(len(x) for _, x in pairs))
    runs = {  # (stage, precision label) -> (tok/s of each run, the limit)
        ("targets", p.resolved): (_median_rate(targets_pass, batch * seq_len, repeats),
                                  peak / (2 * n)),
        ("distill", p.resolved): (_median_rate(distill_step, batch * seq_len, repeats),
                                  peak / (4 * n + 2 * n_trained)),
        ("likelihood", p.resolved): (_median_rate(likelihood, scored, repeats), peak / (2 * n)),
    }
    decoders = {p.resolved: scorer}  # bf16 weights: half the bytes a step reads
    if p.bf16:  # and the weight-only int8 option: half again
        decoders["int8-weights"] = int8_weight_only(model)
    for label, decoder in decoders.items():
        for b in (1, 8):
            pair = bench_pair(decoder, None, seq_len, b, 32, repeats)
            runs[(f"decode-b{b}", label)] = (pair["base"]["decode_tok_s_runs"],
                                             b * stream / decode_bytes(decoder))
    return runs


def decode_bytes(model: Decoder) -> int:
    """Bytes one decode step reads: every weight once, int8 ones where a layer has them."""
    total = weight_bytes(model)
    for mod in model.modules():
        if isinstance(mod, Linear) and mod.int8 is not None:
            q, scale = mod.int8
            total += q.numel() + scale.numel() * scale.element_size()
            total -= mod.weight.numel() * mod.weight.element_size()
    return total


def bench_stages(model: Decoder, pad_id: int, precisions: Sequence[str], repeats: int = 3,
                 k: int = 15, batch: int = 4, seq_len: int = 256,
                 progress: Callable[[str], None] = print) -> dict:
    """Every stage at every precision on fp32 `model` (CPU); see the module docstring."""
    device = model.device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=gen)
    n = params(model)
    flops = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    stream = measure_stream_gbs(device=str(device)) * 1e9
    layers = SELECTORS.get("uniform")(SelectionRequest(model.cfg.n_layers, k))
    # Likelihood items: a shared 192-token context and two 32-token continuations each.
    pairs = [(ids[i % batch, :192].tolist(), ids[(i + 1) % batch, 192:224].tolist())
             for i in range(2 * batch)]
    records: list[StageRecord] = []
    for requested in precisions:
        p = resolve_precision(requested, device)
        progress(f"precision {requested} -> {p.resolved} ({p.reason})")
        runs = _stage_runs(model, p, ids, pairs, pad_id, layers, flops[p.resolved], stream,
                           repeats)
        for (stage, label), (rates, limit) in runs.items():
            tok_s = statistics.median(rates)
            records.append(StageRecord(stage, label, tok_s, rates, limit, tok_s / limit))
            progress(f"  {stage:10s} {label:12s} {tok_s:9.1f} tok/s  "
                     f"({tok_s / limit:.1%} of the limit)")
    fp32 = {r.stage: r.tok_s for r in records if r.precision == "fp32"}
    for r in records:
        r.ratio_to_fp32 = r.tok_s / fp32[r.stage] if r.stage in fp32 else None
    native, why = native_bf16(device)
    return {"machine": {"gemm_flops": flops, "stream_bytes_s": stream,
                        "threads": torch.get_num_threads(), "native_bf16": native,
                        "why": why, "auto_resolves_to": resolve_precision("auto", device).resolved,
                        "torch": torch.__version__},
            "settings": {"batch": batch, "seq_len": seq_len, "k": k, "repeats": repeats,
                         "params": n, "precisions": list(precisions)},
            "records": [asdict(r) for r in records]}


def stages_table(result: dict) -> str:
    m = result["machine"]
    lines = [f"GEMM peak: fp32 {m['gemm_flops']['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
             f"{m['gemm_flops']['bf16'] / 1e9:.0f} GFLOP/s; read bandwidth "
             f"{m['stream_bytes_s'] / 1e9:.1f} GB/s; {m['threads']} threads; native bf16: "
             f"{m['why']}; --precision auto resolves to {m.get('auto_resolves_to', '?')}", "",
             "| stage | precision | tok/s | vs fp32 | limit tok/s | of limit |",
             "|---|---|---:|---:|---:|---:|"]
    for r in result["records"]:
        ratio = f"{r['ratio_to_fp32']:.2f}x" if r["ratio_to_fp32"] is not None else "-"
        lines.append(f"| {r['stage']} | {r['precision']} | {r['tok_s']:.1f} | {ratio} | "
                     f"{r['limit_tok_s']:.0f} | {r['fraction_of_limit']:.1%} |")
    return "\n".join(lines)
