"""Baseline layer selectors, one module each, registered into `rad.method.select.SELECTORS`
(same signature as RAD's search: `selector(request) -> sorted list of k distinct layer indices`).

- `uniform`, `random`, `all`: need only (n_layers, k, seed);
- `profile-top-k`: the diagnosis's leave-one-out redundancy profile (SMART in Zebra-Llama);
- `kl-guided`: the restore-one-layer KL profile (fla-org/hybrid-distillation).
"""

# The plugin module `SELECTORS` imports on its first lookup: each module registers its selector.
from baselines.selectors import (  # noqa: F401
    all_layers,
    kl_guided,
    profile_top_k,
    random_layers,
    uniform,
)
