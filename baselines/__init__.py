"""The baselines RAD is compared against: layer selectors (`selectors`) and methods and
ablations as recipes (`recipes`). Importing the package registers them into rad's registries
(`rad.method.select.SELECTORS`, `rad.method.recipes.RECIPES`); the harness does, once."""

from baselines import recipes, selectors  # noqa: F401  (registration on import)
