"""The model runtime: a compact Llama-family decoder whose layers hold attention or Mamba2 mixers
behind one protocol, one inference cache for both, weight import from Hugging Face folders, and
the one decode core (`decode`: prefill, step, sampler, generate, speculative generate).

Modules, bottom up: config -> linear -> cache -> ssd -> mamba2 -> model -> weights, decode,
prompts; `distributed` (the torchrun process world, work sharded by batch) stands apart.
Nothing here knows about RAD's steps or the harness.
"""
