"""RAD step 4, distillation: losses against cached teacher top-k targets (`losses`), which
parameters train (`trainable`), the one loop every method uses (`loop`) and its data-parallel
engines under torchrun (`parallel`: DDP, FSDP2), and MambaInLlama's stage-1 layer-wise
alignment (`align`)."""
