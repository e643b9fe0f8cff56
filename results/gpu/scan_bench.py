"""Prefill scan on the GPU: mamba-ssm's fused chunk scan vs our torch chunked scan, SmolLM2-135M
mixer sizes (9 heads, head dim = state = 64), fp32 (the scan's dtype), CUDA events, median."""
import json, statistics, sys
import torch
from rad.mamba2 import _kernel_scan, kernel_available, ssd_chunked
dev = torch.device("cuda")
print("kernel available:", kernel_available(dev))
res = []
for b, T in [(1, 2048), (8, 2048), (1, 8192), (8, 8192), (1, 32768)]:
    g = torch.Generator(device=dev).manual_seed(0)
    H, P, N = 9, 64, 64
    x = torch.randn(b, T, H, P, device=dev, generator=g)
    dt = torch.rand(b, T, H, device=dev, generator=g) * 0.1
    A = -torch.rand(H, device=dev, generator=g) * 3
    B = torch.randn(b, T, H, N, device=dev, generator=g)
    C = torch.randn(b, T, H, N, device=dev, generator=g)
    row = {"batch": b, "tokens": T}
    for name, fn in [("torch_chunked", lambda: ssd_chunked(x, dt, A, B, C, 256)),
                     ("mamba_ssm", lambda: _kernel_scan(x, dt, A, B, C, 256, None))]:
        for _ in range(3):
            fn()
        times = []
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); fn(); e.record(); torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        row[name + "_ms"] = statistics.median(times)
    yk, sk = _kernel_scan(x, dt, A, B, C, 256, None)
    yt, st = ssd_chunked(x, dt, A, B, C, 256)
    row["rel_err_y"] = float((yk - yt).norm() / yt.norm())
    row["speedup"] = row["torch_chunked_ms"] / row["mamba_ssm_ms"]
    print(row, flush=True)
    res.append(row)
json.dump(res, open(sys.argv[1], "w"), indent=2)
