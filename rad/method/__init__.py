"""RAD's four steps, one module each, and the recipes that make methods of them:

    diagnose  self-speculative decoding with attention layers skipped (redundancy profile)
    select    the selector protocol + registry, and RAD's Bayesian search
    replace   attention -> Mamba2 hybrids and their initialisations
    distill   losses, trainable policies, the one training loop, stage-1 alignment
    recipes   a method = selector x init x trainable policy x loss (registry)

Everything here runs on `rad.runtime`; baselines register into these registries.
"""
