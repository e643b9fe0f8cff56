"""RAD, the method (arXiv 2505.22135), in two stages:

- `rad.runtime`: the model runtime every step runs on (config, decoder, caches, Mamba2 and its
  scans, weight import, and the one decode core: generate and speculative generate);
- `rad.method`: RAD's four steps (diagnose, select, replace, distill) and the recipes that
  combine them into methods.

`rad.registry`, `rad.digest` and `rad.files` are the small utilities both stages (and the harness)
share.
"""
