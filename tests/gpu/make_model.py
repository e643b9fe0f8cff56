"""A SmolLM2-135M-shaped Llama with random weights (timing does not depend on the values), for
the GPU check: the real teacher's GGUF does not fit the device's carry limit.

usage: python tests/gpu/make_model.py OUT_DIR [TOKENIZER_DIR]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# SmolLM2-135M-Instruct's config.json (the embedded teacher), as the runtime reads it.
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
    rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def main(out: Path, tokenizer: Path | None) -> None:
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).save_pretrained(out)
    if tokenizer is not None:  # the teacher's tokenizer files, so text round-trips
        for f in tokenizer.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, out / f.name)
    print("wrote", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
