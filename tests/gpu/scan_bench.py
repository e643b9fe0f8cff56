"""Prefill scan on the GPU: mamba-ssm's fused chunk scan vs our torch chunked scan, SmolLM2-135M
mixer sizes (9 heads, head dim = state = 64), fp32 (the scan's dtype), CUDA events, median.

usage: python tests/gpu/scan_bench.py OUT.json
"""

from __future__ import annotations

import json
import statistics
import sys

import torch

from rad.runtime.ssd import kernel_available, kernel_scan, ssd_chunked

SHAPES = [(1, 2048), (8, 2048), (1, 8192), (8, 8192), (1, 32768)]  # (batch, tokens)


def median_ms(fn, warmup: int = 3, repeats: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(out: str) -> None:
    dev = torch.device("cuda")
    print("kernel available:", kernel_available(dev))
    rows = []
    for b, T in SHAPES:
        g = torch.Generator(device=dev).manual_seed(0)
        H, P, N = 9, 64, 64
        x = torch.randn(b, T, H, P, device=dev, generator=g)
        dt = torch.rand(b, T, H, device=dev, generator=g) * 0.1
        A = -torch.rand(H, device=dev, generator=g) * 3
        B = torch.randn(b, T, H, N, device=dev, generator=g)
        C = torch.randn(b, T, H, N, device=dev, generator=g)
        args = (x, dt, A, B, C, 256)
        row = {"batch": b, "tokens": T,
               "torch_chunked_ms": median_ms(lambda a=args: ssd_chunked(*a)),
               "mamba_ssm_ms": median_ms(lambda a=args: kernel_scan(*a, None))}
        yk, _ = kernel_scan(x, dt, A, B, C, 256, None)
        yt, _ = ssd_chunked(x, dt, A, B, C, 256)
        row["rel_err_y"] = float((yk - yt).norm() / yt.norm())
        row["speedup"] = row["torch_chunked_ms"] / row["mamba_ssm_ms"]
        print(row, flush=True)
        rows.append(row)
    with open(out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
