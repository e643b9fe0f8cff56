"""Import Hugging Face Llama-family weights into our `Decoder`, accounting for every key.

Names map one to one (HF `model.layers.N.self_attn.o_proj` -> ours `layers.N.mixer.o_proj`)
except two fused projections, concatenated along the output dim: q/k/v -> `qkv_proj` and
gate/up -> `gate_up_proj` (`FUSED` below). No transposes are needed (both use nn.Linear's
(out, in) layout). The import fails loudly on any HF key left over, any parameter left unfilled,
or any shape that differs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from rad.runtime.config import ModelConfig
from rad.runtime.model import Decoder

_RULES = [
    (r"model\.embed_tokens\.(weight)", r"embed.\1"),
    (r"model\.norm\.(weight)", r"norm.\1"),
    (r"lm_head\.(weight)", r"lm_head.\1"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.(weight|bias)", r"layers.\1.mixer.\2.\3"),
    (r"model\.layers\.(\d+)\.mlp\.((?:gate|up|down)_proj)\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
    (r"model\.layers\.(\d+)\.input_layernorm\.(weight)", r"layers.\1.mixer_norm.\2"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.(weight)", r"layers.\1.mlp_norm.\2"),
]
# Our fused parameter <- HF parts, in concatenation order (the model's split functions agree).
FUSED = {"mixer.qkv_proj": ("q_proj", "k_proj", "v_proj"),
         "mlp.gate_up_proj": ("gate_proj", "up_proj")}
# Buffers some checkpoints carry that the runtime recomputes.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|model\.rotary_emb\..*")


class WeightImportError(ValueError):
    pass


def rename_hf_key(key: str) -> str | None:
    for pattern, repl in _RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def convert_hf_state_dict(cfg: ModelConfig, hf_sd: dict[str, torch.Tensor]) -> dict:
    """Our state dict; WeightImportError unless every key and shape is accounted for."""
    expected = _part_shapes(cfg)
    parts, unknown = {}, []
    for key, tensor in hf_sd.items():
        if _IGNORED.fullmatch(key):
            continue
        ours = rename_hf_key(key)
        if ours is None or ours not in expected:
            unknown.append(key)
            continue
        if tuple(tensor.shape) != expected[ours]:
            raise WeightImportError(
                f"{key}: shape {tuple(tensor.shape)} != expected {expected[ours]}")
        parts[ours] = tensor
    if cfg.tie_word_embeddings:
        head = parts.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, parts.get("embed.weight", head)):
            raise WeightImportError("tie_word_embeddings is set but lm_head differs from embed")
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(parts))
    if unknown or missing:
        raise WeightImportError(
            f"unconsumed HF keys {unknown[:5]}, missing parameters {missing[:5]} "
            f"({len(unknown)} unconsumed, {len(missing)} missing)")
    return _fuse(parts)


def _fused_name(part_key: str) -> tuple[str, str] | None:
    """`layers.3.mixer.k_proj.bias` -> (`layers.3.mixer.qkv_proj.bias`, `k_proj`)."""
    for fused, members in FUSED.items():
        module, fused_leaf = fused.split(".")
        m = re.fullmatch(rf"(layers\.\d+\.{module})\.({'|'.join(members)})\.(weight|bias)",
                         part_key)
        if m:
            return f"{m[1]}.{fused_leaf}.{m[3]}", m[2]
    return None


def _fuse(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, groups = {}, {}
    for key, tensor in parts.items():
        target = _fused_name(key)
        if target is None:
            out[key] = tensor
        else:
            groups.setdefault(target[0], {})[target[1]] = tensor
    for fused_key, members in groups.items():
        order = FUSED[".".join(fused_key.split(".")[2:4])]
        out[fused_key] = torch.cat([members[name] for name in order], dim=0)
    return out


def _part_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of our parameters with the fused ones split back into their HF parts."""
    with torch.device("meta"):
        model = Decoder(cfg)
    shapes = {}
    for key, tensor in model.state_dict().items():
        layer_module = ".".join(key.split(".")[2:4])  # e.g. "mixer.qkv_proj"
        if key.startswith("layers.") and layer_module in FUSED:
            prefix, leaf = ".".join(key.split(".")[:3]), key.split(".")[-1]
            sizes = {"mixer.qkv_proj": (cfg.q_width, cfg.kv_width, cfg.kv_width),
                     "mlp.gate_up_proj": (cfg.intermediate_size,) * 2}[layer_module]
            for name, size in zip(FUSED[layer_module], sizes, strict=True):
                shapes[f"{prefix}.{name}.{leaf}"] = (size, *tensor.shape[1:])
        else:
            shapes[key] = tuple(tensor.shape)
    return shapes


def build_decoder(cfg: ModelConfig, sd: dict[str, torch.Tensor], dtype=torch.float32,
                  device="cpu", layer_kinds=None, ssm=None) -> Decoder:
    """Instantiate on the meta device (no random init) and adopt the given tensors (our names;
    `layer_kinds`/`ssm` as `Decoder` takes them, for hybrids)."""
    with torch.device("meta"):
        model = Decoder(cfg, layer_kinds, ssm)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    missing, unknown = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unknown:
        raise WeightImportError(f"weights do not fit the model: missing {missing[:3]}, "
                                f"unexpected {unknown[:3]}")
    bad = [k for k in expected if tuple(sd[k].shape) != expected[k]]
    if bad:
        raise WeightImportError(f"{bad[0]}: shape {tuple(sd[bad[0]].shape)} != "
                                f"expected {expected[bad[0]]}")
    # copy=True: never alias the caller's tensors (e.g. a live HF model's parameters).
    sd = {k: v.to(device=device, dtype=dtype, copy=True) for k, v in sd.items()}
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["embed.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval().requires_grad_(False)


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in folder.glob("*.safetensors")]
    if not files:
        raise WeightImportError(f"no *.safetensors weights in {folder}")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            sd.update(load_file(str(folder / name)))
        except Exception as e:  # safetensors raises its own error type on corrupt headers/data
            raise WeightImportError(f"cannot read {folder / name}: {e}") from None
    return sd


def load_decoder(folder: Path, dtype=torch.float32, device="cpu") -> Decoder:
    """Load a Llama-family HF folder (config.json + safetensors) into our runtime."""
    cfg = ModelConfig.from_folder(folder)
    return build_decoder(cfg, convert_hf_state_dict(cfg, read_safetensors_folder(folder)),
                         dtype=dtype, device=device)
