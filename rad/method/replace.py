"""Attention -> Mamba2 hybrids: build one from a model and a list of layers, save it, load it.

A hybrid is an ordinary `Decoder` whose listed blocks hold a `Mamba2` mixer instead of
attention; MLPs, norms, embeddings and the head are the teacher's. Its folder holds
`config.json` (`HybridConfig`: base model config, per-layer mixer kinds, SSM sizes, init,
provenance), `model.safetensors` in the runtime's own parameter names, and the tokenizer.

Initialisations (`INITS`), all from the attention being replaced:
- `kqvo` (MambaInLlama): v_proj -> x, k_proj -> B, q_proj -> C, o_proj -> out_proj; z, conv,
  dt, A, D standard.
- `skip` (RAD): `kqvo` with the gate closed, i.e. the z rows of in_proj zeroed. silu(0) = 0, so
  the mixer outputs exactly zero and the hybrid *is* the self-speculative draft that skips those
  layers. Why not the paper's literal "zero in_proj": with x, B, C, z all zero, the first
  gradient reaches only z (through the conv bias's constant output); closing only the gate keeps
  the same zero output while z's first gradient follows the attention-shaped y = SSM(v, k, q),
  and x, B, C start where `kqvo` starts. No init with an exactly-zero output and out_proj = o_proj
  can give out_proj a gradient on the first step (its gradient is the zero input it sees);
  every parameter receives one from the second step on.
- `skip-zero`: the paper's literal recipe (all of in_proj zero, out_proj <- o_proj), an ablation.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from rad.registry import Registry
from rad.runtime.config import ModelConfig
from rad.runtime.linear import set_weight_layout
from rad.runtime.mamba2 import Mamba2, Mamba2Sizes
from rad.runtime.model import Attention, Decoder
from rad.runtime.weights import (
    WeightImportError,
    build_decoder,
    load_decoder,
    read_safetensors_folder,
)

HYBRID_MODEL_TYPE = "rad_hybrid"
HYBRID_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"


class HybridError(ValueError):
    """A bad layer list or init name, or a folder that is not a valid hybrid."""


@dataclass(frozen=True)
class HybridConfig:
    base: ModelConfig
    layer_kinds: tuple[str, ...]
    ssm: Mamba2Sizes
    init: str
    seed: int
    base_model: str = ""  # what the hybrid was built from (name or folder)
    provenance: dict = field(default_factory=dict)

    @property
    def mamba_layers(self) -> list[int]:
        return [i for i, k in enumerate(self.layer_kinds) if k == Mamba2.kind]

    def to_dict(self) -> dict:
        return {"model_type": HYBRID_MODEL_TYPE, "format_version": HYBRID_FORMAT_VERSION,
                "base": self.base.to_dict(), "layer_kinds": list(self.layer_kinds),
                "mamba_layers": self.mamba_layers, "ssm": self.ssm.to_dict(), "init": self.init,
                "seed": self.seed, "base_model": self.base_model, "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict) -> HybridConfig:
        if d.get("model_type") != HYBRID_MODEL_TYPE:
            raise HybridError(f"model_type is {d.get('model_type')!r}, not {HYBRID_MODEL_TYPE!r}")
        if d.get("format_version") != HYBRID_FORMAT_VERSION:
            raise HybridError(f"hybrid format_version {d.get('format_version')!r} is not "
                              f"{HYBRID_FORMAT_VERSION}")
        try:
            cfg = cls(base=ModelConfig.from_dict(d["base"]),
                      layer_kinds=tuple(d["layer_kinds"]), ssm=Mamba2Sizes.from_dict(d["ssm"]),
                      init=d["init"], seed=int(d["seed"]), base_model=d.get("base_model", ""),
                      provenance=dict(d.get("provenance", {})))
        except (KeyError, TypeError) as e:
            raise HybridError(f"hybrid config.json is missing or has a bad field: {e}") from None
        if len(cfg.layer_kinds) != cfg.base.n_layers:
            raise HybridError(f"{len(cfg.layer_kinds)} layer kinds for {cfg.base.n_layers} layers")
        unknown = set(cfg.layer_kinds) - {Attention.kind, Mamba2.kind}
        if unknown:
            raise HybridError(f"unknown layer kinds {sorted(unknown)}")
        return cfg


def is_hybrid_config(d: dict) -> bool:
    return isinstance(d, dict) and d.get("model_type") == HYBRID_MODEL_TYPE


# -- initialisations ----------------------------------------------------------------------

def _copy_kqvo(mixer: Mamba2, att: Attention) -> None:
    """v -> x, k -> B, q -> C (rows of in_proj), o -> out_proj; the rest keeps its init."""
    with torch.no_grad():
        q, k, v = att.split_qkv(att.qkv_proj.weight, dim=0)
        _, x, B, C, _ = mixer.split_in_proj(mixer.in_proj.weight, dim=0)
        for dst, src in ((x, v), (B, k), (C, q)):
            dst.copy_(src)
        if att.qkv_proj.bias is not None:
            q, k, v = att.split_qkv(att.qkv_proj.bias, dim=0)
            _, x, B, C, _ = mixer.split_in_proj(mixer.in_proj.bias, dim=0)
            for dst, src in ((x, v), (B, k), (C, q)):
                dst.copy_(src)
        mixer.out_proj.weight.copy_(att.o_proj.weight)
        if att.o_proj.bias is not None:
            mixer.out_proj.bias.copy_(att.o_proj.bias)


def _close_output(mixer: Mamba2, whole_in_proj: bool) -> None:
    """Make the mixer output exactly zero: gate rows (or all of in_proj) and out_proj bias 0."""
    with torch.no_grad():
        rows = [mixer.in_proj.weight] if whole_in_proj else [
            mixer.split_in_proj(mixer.in_proj.weight, dim=0)[0]]
        if mixer.in_proj.bias is not None:
            rows.append(mixer.in_proj.bias if whole_in_proj
                        else mixer.split_in_proj(mixer.in_proj.bias, dim=0)[0])
        for t in rows:
            t.zero_()
        if mixer.out_proj.bias is not None:
            mixer.out_proj.bias.zero_()


def _init_skip(mixer: Mamba2, att: Attention) -> None:
    _copy_kqvo(mixer, att)
    _close_output(mixer, whole_in_proj=False)


def _init_skip_zero(mixer: Mamba2, att: Attention) -> None:
    with torch.no_grad():
        mixer.out_proj.weight.copy_(att.o_proj.weight)
    _close_output(mixer, whole_in_proj=True)


@dataclass(frozen=True)
class Init:
    name: str
    apply: Callable[[Mamba2, Attention], None]  # (new mixer, the attention it replaces)
    description: str


INITS: Registry[Init] = Registry("init")
for _init in (
    Init("kqvo", _copy_kqvo, "MambaInLlama: v->x, k->B, q->C, o->out_proj"),
    Init("skip", _init_skip, "RAD: kqvo with the z gate zeroed; starts exactly as the skip-draft"),
    Init("skip-zero", _init_skip_zero, "paper-literal RAD: in_proj all zero, out_proj <- o_proj"),
):
    INITS.register(_init.name, _init)


# -- build, save, load ---------------------------------------------------------------------

def check_layers(layers: Sequence[int], model: Decoder) -> list[int]:
    n = model.cfg.n_layers
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise HybridError(f"layer {bad[0]} is out of range 0..{n - 1}")
    if len(set(layers)) != len(layers):
        raise HybridError(f"duplicate layers in {list(layers)}")
    kinds = model.layer_kinds
    taken = [i for i in layers if kinds[i] != Attention.kind]
    if taken:
        raise HybridError(f"layer {taken[0]} is already {kinds[taken[0]]}, not attention")
    return sorted(layers)


def build_hybrid(model: Decoder, layers: Sequence[int], init: str, seed: int = 0,
                 ssm: Mamba2Sizes | None = None) -> Decoder:
    """A copy of `model` whose listed attention sub-layers are Mamba2 mixers (seeded init)."""
    if init not in INITS:
        raise HybridError(f"unknown init {init!r} (known: {', '.join(INITS.names())})")
    layers = check_layers(layers, model)
    ssm = ssm or Mamba2Sizes.from_model_config(model.cfg)
    hybrid = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for i in layers:
        block = hybrid.layers[i]
        mixer = Mamba2(ssm)
        mixer.reset_parameters(gen)  # fp32 on CPU: the same draw on every device and dtype
        INITS.get(init).apply(mixer, block.mixer)
        block.mixer = mixer.to(dtype=model.dtype, device=model.device)
    hybrid.requires_grad_(False)
    set_weight_layout(hybrid, in_major=not hybrid.lm_head.weight.is_contiguous())
    return hybrid


def hybrid_config(model: Decoder, init: str, seed: int, base_model: str,
                  provenance: dict | None = None) -> HybridConfig:
    mixers = [b.mixer for b in model.layers if isinstance(b.mixer, Mamba2)]
    ssm = mixers[0].sizes if mixers else Mamba2Sizes.from_model_config(model.cfg)
    return HybridConfig(model.cfg, tuple(model.layer_kinds), ssm, init, seed, base_model,
                        dict(provenance or {}))


def save_hybrid(model: Decoder, cfg: HybridConfig, folder: Path) -> None:
    """Write config.json and model.safetensors into an existing folder."""
    folder = Path(folder)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_word_embeddings:
        sd.pop("lm_head.weight")  # the loader re-ties it to embed.weight
    d = cfg.to_dict()
    d["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(d, indent=2) + "\n")
    save_file(sd, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def read_hybrid_config(folder: Path) -> HybridConfig:
    try:
        d = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise HybridError(f"{folder} has no readable config.json ({e})") from None
    return HybridConfig.from_dict(d)


def load_hybrid(folder: Path, dtype=torch.float32, device="cpu") -> Decoder:
    cfg = read_hybrid_config(folder)
    return build_decoder(cfg.base, read_safetensors_folder(folder), dtype=dtype, device=device,
                         layer_kinds=cfg.layer_kinds, ssm=cfg.ssm)


def load_model_folder(folder: Path, dtype=torch.float32, device="cpu") -> Decoder:
    """Any model folder: a hybrid written by `save_hybrid` or a Llama-family HF folder."""
    try:
        d = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise WeightImportError(f"unreadable config.json in {folder} ({e})") from None
    if is_hybrid_config(d):
        return load_hybrid(folder, dtype, device)
    return load_decoder(folder, dtype, device)

