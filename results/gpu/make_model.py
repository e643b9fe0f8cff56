"""A SmolLM2-135M-shaped Llama with random bf16 weights (timing does not depend on values)."""
import json, shutil, sys
from pathlib import Path
import torch
from transformers import LlamaConfig, LlamaForCausalLM
src, dst = Path(".gpu/smol"), Path(sys.argv[1])
cfg = LlamaConfig(**{k: v for k, v in json.loads((src / "config.json").read_text()).items()
                     if k not in ("architectures", "transformers_version")})
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(dst)
for f in src.iterdir():
    if f.name != "config.json":
        shutil.copy(f, dst / f.name)
print("wrote", dst)
