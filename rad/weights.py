"""Import Hugging Face Llama-family weights into `rad.model.Decoder`, accounting for every key.

Names map one to one (HF `model.layers.N.self_attn.q_proj` -> ours `layers.N.mixer.q_proj`),
no transposes are needed (both use nn.Linear's (out, in) layout), and the import fails loudly
on any HF key left over, any parameter left unfilled, or any shape that differs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from rad.config import ModelConfig
from rad.model import Decoder, fast_layout_is_in_major, set_weight_layout

_RULES = [
    (r"model\.embed_tokens\.(weight)", r"embed.\1"),
    (r"model\.norm\.(weight)", r"norm.\1"),
    (r"lm_head\.(weight)", r"lm_head.\1"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.(weight|bias)", r"layers.\1.mixer.\2.\3"),
    (r"model\.layers\.(\d+)\.mlp\.((?:gate|up|down)_proj)\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
    (r"model\.layers\.(\d+)\.input_layernorm\.(weight)", r"layers.\1.mixer_norm.\2"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.(weight)", r"layers.\1.mlp_norm.\2"),
]
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
    expected = {k: tuple(shape) for k, shape in _shapes(cfg).items()}
    out, unknown = {}, []
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
        out[ours] = tensor
    if cfg.tie_word_embeddings:
        head = out.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, out.get("embed.weight", head)):
            raise WeightImportError("tie_word_embeddings is set but lm_head differs from embed")
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(out))
    if unknown or missing:
        raise WeightImportError(
            f"unconsumed HF keys {unknown[:5]}, missing parameters {missing[:5]} "
            f"({len(unknown)} unconsumed, {len(missing)} missing)")
    return out


def _shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in Decoder(cfg).state_dict().items()}


def build_decoder(cfg: ModelConfig, sd: dict[str, torch.Tensor], dtype=torch.float32,
                  device="cpu") -> Decoder:
    """Instantiate on the meta device (no random init) and adopt the given tensors."""
    with torch.device("meta"):
        model = Decoder(cfg)
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["embed.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    set_weight_layout(model, fast_layout_is_in_major(dtype, device))
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
        sd.update(load_file(str(folder / name)))
    return sd


def load_decoder(folder: Path, dtype=torch.float32, device="cpu") -> Decoder:
    """Load a Llama-family HF folder (config.json + safetensors) into our runtime."""
    cfg = ModelConfig.from_folder(folder)
    return build_decoder(cfg, convert_hf_state_dict(cfg, read_safetensors_folder(folder)),
                         dtype=dtype, device=device)
