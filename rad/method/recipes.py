"""Methods as declarative recipes: selector x init x trainable policy x loss (x extras).

A method is data, not code: the one distillation loop (`rad.method.distill.loop`) reads a recipe,
so an ablation is a new registry entry. Every name in a recipe is checked against its registry
when the recipe is registered. RAD's own recipes live here; the baselines it is compared against
register theirs in `baselines/recipes.py`, which the registry imports on its first lookup.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rad.method.distill.losses import LOSSES
from rad.method.distill.trainable import TRAINABLE_POLICIES
from rad.method.replace import INITS
from rad.method.select import SELECTORS, Selector
from rad.registry import Registry

NO_SELECTOR = "none"  # keeps every attention layer: the reference row (nothing replaced)


@dataclass(frozen=True)
class Recipe:
    name: str
    selector: str  # a registered selector, or NO_SELECTOR for the reference row
    init: str | None  # None only for the reference row
    trainable: str | None  # None: nothing is trained
    loss: str = "forward-kl"
    ce_weight: float = 0.0  # optional CE on the data beside the KL
    align_steps: int = 0  # stage-1 layer-wise alignment steps per new mixer (0: none)
    description: str = ""

    def __post_init__(self) -> None:
        if self.trains:
            for registry, value in ((SELECTORS, self.selector), (INITS, self.init),
                                    (TRAINABLE_POLICIES, self.trainable)):
                if value not in registry:
                    raise ValueError(f"{self.name}: unknown {registry.kind} {value!r}")
        elif (self.selector, self.init) != (NO_SELECTOR, None):
            raise ValueError(f"{self.name}: a recipe that trains nothing replaces nothing "
                             f"(selector {NO_SELECTOR!r}, init None)")
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: unknown loss {self.loss!r}")

    @property
    def trains(self) -> bool:
        return self.trainable is not None

    @property
    def is_reference(self) -> bool:
        """The row every other method is compared with (the unchanged model)."""
        return not self.trains

    @property
    def layer_selector(self) -> Selector | None:
        return SELECTORS.get(self.selector) if self.trains else None

    def as_dict(self) -> dict:
        return asdict(self)


# The baselines' recipes register from their own package, imported on the first lookup.
RECIPES: Registry[Recipe] = Registry("method", plugins=("baselines.recipes",))


def register_recipe(recipe: Recipe) -> Recipe:
    return RECIPES.register(recipe.name, recipe)


def get_recipe(name: str) -> Recipe:
    return RECIPES.get(name)


register_recipe(Recipe(
    "teacher", NO_SELECTOR, None, None,
    description="the unchanged model: the reference row"))
register_recipe(Recipe(
    "rad", "rad", "skip", "ssm-only",
    description="RAD: layers from the Bayesian self-speculative search, skip init (starts as "
    "the draft), only the new Mamba2 parameters trained"))
