"""The CUDA paths against the CPU reference. Skipped where no GPU is visible (CI, these CPUs);
run on a GPU machine with `python -m pytest -q tests/test_cuda.py`."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _scan_inputs(b, T, H, P, N, seed, device=CUDA):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g)
    dt = torch.rand(b, T, H, generator=g) * 0.5
    A = -torch.rand(H, generator=g) * 3
    B = torch.randn(b, T, H, N, generator=g)
    C = torch.randn(b, T, H, N, generator=g)
    state = torch.randn(b, H, P, N, generator=g)
    return [t.to(device) for t in (x, dt, A, B, C, state)]


@pytest.mark.parametrize("T, chunk, with_state", [(1, 64, False), (100, 64, True),
                                                   (256, 64, False), (777, 128, True)])
def test_mamba_ssm_kernel_matches_the_torch_chunked_scan(T, chunk, with_state):
    from rad.runtime.ssd import kernel_available, kernel_scan, ssd_chunked

    if not kernel_available(CUDA):
        pytest.skip("mamba-ssm's chunk scan does not import here")
    x, dt, A, B, C, state = _scan_inputs(2, T, 4, 64, 64, seed=T)
    init = state if with_state else None
    y_ref, s_ref = ssd_chunked(x.double(), dt.double(), A.double(), B.double(), C.double(),
                               chunk, None if init is None else init.double())
    y, s = kernel_scan(x, dt, A, B, C, chunk, init)
    assert _rel_err(y, y_ref) < 5e-3 and _rel_err(s, s_ref) < 5e-3  # tf32 dots


def test_mixer_and_hybrid_on_cuda_match_the_cpu_reference():
    from tiny_models import pair

    from rad.method.replace import build_hybrid
    from rad.runtime.decode import generate

    _, model = pair("llama")
    hybrid = build_hybrid(model, [0, 2], "kqvo", seed=0).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 37), generator=torch.Generator()
                        .manual_seed(0))
    with torch.no_grad():
        ref = hybrid(ids)
        gpu = build_hybrid(model, [0, 2], "kqvo", seed=0).eval().to(CUDA)
        out = gpu(ids.to(CUDA))
        assert _rel_err(out.cpu(), ref) < 1e-3
        cpu_tokens = generate(hybrid, ids[:1], None, 12, ()).tokens
        gpu_tokens = generate(gpu, ids[:1].to(CUDA), None, 12, ()).tokens
    assert cpu_tokens == gpu_tokens


def test_distillation_steps_on_cuda_follow_the_cpu_run(tmp_path):
    from tiny_models import pair

    from rad.method.distill.loop import TrainConfig, TrainData, train
    from rad.method.distill.losses import teacher_targets
    from rad.method.replace import build_hybrid

    _, teacher = pair("llama")
    ids = torch.randint(0, teacher.cfg.vocab_size, (8, 24),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = teacher_targets(teacher(ids), 16, 1.0)
    cfg = TrainConfig(steps=4, batch_size=2, eval_every=2, ckpt_every=2, precision="fp32")
    data = TrainData(ids[:6], targets[:6], ids[6:], targets[6:])
    curves = {}
    for device in ("cpu", "cuda"):
        student = build_hybrid(teacher, [1], "kqvo", seed=0).to(device)
        curves[device] = train(student, "ssm-only", cfg, 0, data, tmp_path / device,
                               progress=False)
    for a, b in zip(curves["cpu"], curves["cuda"], strict=True):
        assert a["heldout_kl"] == pytest.approx(b["heldout_kl"], rel=1e-3, abs=1e-6)
    student = build_hybrid(teacher, [1], "kqvo", seed=0).to(CUDA)
    bf16 = train(student, "ssm-only", TrainConfig(steps=2, batch_size=2, eval_every=1,
                                                  ckpt_every=2, precision="bf16"),
                 0, data, tmp_path / "bf16", progress=False)
    assert all(torch.isfinite(torch.tensor(c["heldout_kl"])) for c in bf16)


@pytest.mark.parametrize("layers", [[], [0, 2], [0, 1, 2]])
def test_compiled_cuda_decode_gives_the_eager_tokens(layers):
    """CUDA graphs (reduce-overhead) against the eager step on the same GPU, plain and
    speculative, on a teacher, a hybrid and a full-SSM model."""
    from tiny_models import pair

    from rad.method.replace import build_hybrid
    from rad.runtime import compile_mode
    from rad.runtime.decode import generate, left_pad, speculative_generate

    _, teacher = pair("llama")
    # A deep copy: `.to` must not move the shared tiny teacher (or weights a hybrid shares).
    model = copy.deepcopy(build_hybrid(teacher, layers, "kqvo", seed=0) if layers
                          else teacher).to(CUDA)
    ids, mask = left_pad([[3, 4, 5, 6], [7, 8]], 0)
    out = {}
    for mode in ("off", "on"):
        compile_mode.set_compile_mode(mode)
        try:
            out[mode] = (generate(model, ids, mask, 12, stop_at_eos=False).tokens,
                         speculative_generate(model, ids[:1], 12, 3, skip=[1]).tokens)
        finally:
            compile_mode.set_compile_mode("auto")
    assert out["on"] == out["off"]
