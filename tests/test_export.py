"""`rad hybrid export`: hybrids written as transformers' own Bamba, checked against transformers
itself (offline, its torch path on CPU) and loaded back bit-identically."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from tiny_models import TOL, VOCAB, pair

from harness.cli import main
from rad.method.export import EXPORT_TARGETS, ExportError, load_exported
from rad.method.replace import build_hybrid, hybrid_config
from rad.runtime.decode import generate, left_pad
from rad.runtime.mamba2 import Mamba2, Mamba2Sizes
from rad.runtime.weights import read_safetensors_folder

BAMBA = EXPORT_TARGETS.get("bamba")


def _trained(model, seed: int):
    """Stand-in for distillation: every Mamba2 parameter moved off its init (a `skip` init's
    closed gate would otherwise hide the whole mixer)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in model.layers:
            if isinstance(blk.mixer, Mamba2):
                for p in blk.mixer.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _export(model, folder: Path) -> Path:
    config, weights = BAMBA.to_hf(model, hybrid_config(model, "kqvo", 0, "tiny"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _hf(folder: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _rows(seed: int, batch: int, padded: bool) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3 if padded else 9, 10, (batch,), generator=gen).tolist()
    if not padded:
        lengths = [lengths[0]] * batch
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["llama", "llama-tied", "llama3-rope", "qwen2"]),
       layers=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
       init=st.sampled_from(["kqvo", "skip"]), seed=st.integers(0, 1000))
def test_transformers_bamba_computes_what_the_runtime_computes(tmp_path_factory, kind, layers,
                                                                init, seed):
    _, teacher = pair(kind)
    hybrid = _trained(build_hybrid(teacher, layers, init, seed=seed), seed)
    folder = _export(hybrid, tmp_path_factory.mktemp("bamba"))
    hf = _hf(folder)
    # Left padding where the students have no in_proj bias; Qwen2's bias reaches padded conv
    # inputs in transformers' Bamba (documented in rad.method.export), so its rows are unpadded.
    ids, mask = left_pad(_rows(seed, 3, padded=kind != "qwen2"), 0)
    with torch.no_grad():
        ours = hybrid(ids, mask)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF generate passes
        # use_cache=False: transformers 5.24's cache cannot size an all-Mamba2 Bamba (full SSM)
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                    use_cache=False).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() <= TOL
    # exported -> loaded back by our runtime: bit-identical parameters and logits
    back = load_exported(json.loads((folder / "config.json").read_text()),
                         read_safetensors_folder(folder))
    a, b = hybrid.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(back(ids, mask), ours)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_generate_gives_the_runtimes_greedy_tokens(tmp_path, kind):
    _, teacher = pair(kind)
    hybrid = _trained(build_hybrid(teacher, [0, 2], "skip", seed=3), 3)
    hf = _hf(_export(hybrid, tmp_path / "bamba"))
    for row in _rows(5, 3, padded=True):
        ids = torch.tensor([row])
        ours = generate(hybrid, ids, None, 12, stop_at_eos=False).tokens[0]
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                             min_new_tokens=12, do_sample=False, pad_token_id=0)
        assert theirs[0, ids.shape[1]:].tolist() == ours


def test_what_bamba_cannot_express_is_refused():
    _, teacher = pair("llama")
    sizes = dataclasses.replace(Mamba2Sizes.from_model_config(teacher.cfg), norm_eps=1e-3)
    odd = build_hybrid(teacher, [1], "kqvo", ssm=sizes)
    with pytest.raises(ExportError, match="rms_norm_eps"):
        BAMBA.to_hf(odd, hybrid_config(odd, "kqvo", 0, "tiny"))


def test_a_tampered_export_is_refused_on_load(tmp_path):
    _, teacher = pair("llama")
    hybrid = _trained(build_hybrid(teacher, [1], "kqvo"), 0)
    folder = _export(hybrid, tmp_path / "bamba")
    config = json.loads((folder / "config.json").read_text())
    sd = read_safetensors_folder(folder)
    key = "model.layers.1.mamba.in_proj.weight"
    s = hybrid.layers[1].mixer.sizes
    sd[key] = sd[key].clone()
    sd[key][s.inner] += 1.0  # first x row of head 0 only: its GQA group no longer repeats
    with pytest.raises(ExportError, match="heads of one KV group differ"):
        load_exported(config, sd)
    del config["rad_hybrid"]
    with pytest.raises(ExportError, match="not exported by rad-harness"):
        load_exported(config, read_safetensors_folder(folder))


# -- the command ---------------------------------------------------------------------------------
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_export_command_writes_a_folder_every_rad_command_loads(capsys, tmp_path):
    src, out = tmp_path / "hyb", tmp_path / "bamba"
    assert _cli(capsys, "hybrid", "build", "--model", "tiny-random", "--layers", "1,2",
                "--init", "skip", "--out", str(src))[0] == 0
    rc, _, err = _cli(capsys, "hybrid", "export", str(src), "--to", "bamba", "--out", str(out))
    assert rc == 0, err
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md",
            "tokenizer.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bamba" and config["attn_layer_indices"] == [0, 3]
    card = (out / "README.md").read_text()
    assert "BambaForCausalLM" in card and "[1, 2]" in card and "`skip`" in card
    prompt = ["--prompt", "Hello there", "--max-new-tokens", "6"]
    a = _cli(capsys, "generate", "--model", str(src), *prompt)
    b = _cli(capsys, "generate", "--model", str(out), *prompt)
    assert a[0] == b[0] == 0 and a[1] == b[1]


def test_the_model_card_carries_the_runs_results(capsys, tmp_path):
    """A hybrid that is a distill step of a `rad reproduce` run: the card quotes its cell."""
    src = tmp_path / "run" / "steps" / "distill-0123"
    _cli(capsys, "hybrid", "build", "--model", "tiny-random", "--layers", "1", "--init",
         "skip", "--out", str(src))
    (tmp_path / "run/cells").mkdir()
    (tmp_path / "run/cells/rad-s0.json").write_text(json.dumps({
        "method": "rad", "seed": 0, "profile": "smoke", "steps": {"distill": {
            "folder": "steps/distill-0123"}}, "metrics": {"heldout_kl": 0.125, "speedup": 1.5}}))
    rc, _, err = _cli(capsys, "hybrid", "export", str(src), "--to", "bamba", "--out",
                      str(tmp_path / "out"))
    assert rc == 0, err
    card = (tmp_path / "out/README.md").read_text()
    assert "harness results (smoke profile, rad seed 0) | heldout_kl 0.125, speedup 1.5" in card


def test_export_refusals_are_one_line_and_write_nothing(capsys, tmp_path):
    src = tmp_path / "hyb"
    _cli(capsys, "hybrid", "build", "--model", "tiny-random", "--layers", "1", "--init",
         "kqvo", "--out", str(src))
    (tmp_path / "taken").mkdir()
    cases = [
        (["--to", "zamba", "--out", str(tmp_path / "a")], "unknown export target 'zamba'"),
        (["--to", "bamba", "--out", str(tmp_path / "taken")], "already exists"),
    ]
    for extra, needle in cases:
        rc, _, err = _cli(capsys, "hybrid", "export", str(src), *extra)
        assert rc == 2 and needle in err and err.count("\n") == 1, (extra, err)
    from harness.models import resolve_model_folder
    teacher = resolve_model_folder("tiny-random")
    rc, _, err = _cli(capsys, "hybrid", "export", str(teacher), "--to", "bamba", "--out",
                      str(tmp_path / "b"))
    assert rc == 2 and "is not a hybrid folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyb", "taken"]
    # a stock Bamba folder (no rad_hybrid) is refused by every command, in one line
    _cli(capsys, "hybrid", "export", str(src), "--to", "bamba", "--out", str(tmp_path / "ok"))
    stock = tmp_path / "stock"
    shutil.copytree(tmp_path / "ok", stock)
    config = json.loads((stock / "config.json").read_text())
    del config["rad_hybrid"]
    (stock / "config.json").write_text(json.dumps(config))
    rc, _, err = _cli(capsys, "generate", "--model", str(stock), "--prompt", "x")
    assert rc == 2 and "not exported by rad-harness" in err and err.count("\n") == 1
