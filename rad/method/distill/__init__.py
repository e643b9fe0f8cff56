"""RAD step 4, distillation: losses against cached teacher top-k targets (`losses`), which
parameters train (`trainable`), the one loop every method uses (`loop`), and MambaInLlama's
stage-1 layer-wise alignment (`align`)."""
