"""The baselines RAD is compared against: layer selectors (`selectors`) and methods and
ablations as recipes (`recipes`). rad's registries name these modules as plugins
(`rad.method.select.SELECTORS`, `rad.method.recipes.RECIPES`) and import them on their first
lookup; nothing else needs to import them for their entries to exist."""
