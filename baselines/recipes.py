"""The baselines RAD is compared against, and ablations, as recipes (see `rad.method.recipes`)."""

from __future__ import annotations

from rad.method.recipes import Recipe, register_recipe

register_recipe(Recipe(
    "plain-distill", "uniform", "kqvo", "all",
    description="MambaInLlama-style: uniform interleave, kqvo init, all parameters trained"))
register_recipe(Recipe(
    "random-swap", "random", "skip", "ssm-only",
    description="k random layers (seeded), otherwise as rad: isolates the choice of layers"))
register_recipe(Recipe(
    "full-ssm", "all", "kqvo", "all",
    description="every attention layer becomes Mamba2, kqvo init, all parameters trained"))
# Ablations: one axis of rad changed at a time.
register_recipe(Recipe(
    "rad-kqvo", "rad", "kqvo", "ssm-only", description="rad with the kqvo init"))
register_recipe(Recipe(
    "rad-all", "rad", "skip", "all", description="rad training every parameter"))
register_recipe(Recipe(
    "rad-align", "rad", "skip", "ssm-only", align_steps=50,
    description="rad with stage-1 layer-wise alignment of each new mixer first"))
register_recipe(Recipe(
    "uniform-swap", "uniform", "skip", "ssm-only",
    description="uniform interleave, otherwise as rad: selection vs the uniform layout"))
# The field's layer selectors, otherwise as rad: the leaderboard compares layer choices with
# init and training fixed.
register_recipe(Recipe(
    "profile-top-k", "profile-top-k", "skip", "ssm-only",
    description="the redundancy profile's top-k (leave-one-out sensitivity, SMART in "
    "Zebra-Llama) without the Bayesian search, otherwise as rad"))
register_recipe(Recipe(
    "kl-guided", "kl-guided", "skip", "ssm-only",
    description="KL-guided selection (fla-org/hybrid-distillation): replace the k layers whose "
    "lone restoration least lowers the all-skipped model's KL, otherwise as rad"))
