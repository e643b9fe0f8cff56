"""Methods as declarative recipes: selector x init x trainable policy x loss (x extras).

A method is data, not code: the one distillation loop (`rad.train`) reads a recipe, so an
ablation is a new registry entry. RAD's own recipe lives here; the baselines it is compared
against register theirs in `baselines/recipes.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rad.hybrid import INITS
from rad.kd import LOSSES

TRAINABLE = ("ssm-only", "all")
# Selector names resolve in baselines.selectors ("rad" is the Bayesian search, "none" keeps
# every attention layer: the reference row).
SELECTORS = ("rad", "uniform", "random", "all", "none")


@dataclass(frozen=True)
class Recipe:
    name: str
    selector: str
    init: str | None  # None only for the teacher row (nothing replaced)
    trainable: str | None  # None: nothing is trained
    loss: str = "forward-kl"
    ce_weight: float = 0.0  # optional CE on the data beside the KL
    align_steps: int = 0  # stage-1 layer-wise alignment steps per new mixer (0: none)
    description: str = ""

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS:
            raise ValueError(f"{self.name}: unknown selector {self.selector!r}")
        if self.selector != "none":
            if self.init not in INITS:
                raise ValueError(f"{self.name}: unknown init {self.init!r}")
            if self.trainable not in TRAINABLE:
                raise ValueError(f"{self.name}: unknown trainable policy {self.trainable!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: unknown loss {self.loss!r}")

    @property
    def trains(self) -> bool:
        return self.selector != "none"

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    _load_baselines()
    if name not in RECIPES:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def all_recipes() -> dict[str, Recipe]:
    _load_baselines()
    return dict(RECIPES)


def _load_baselines() -> None:
    import baselines.recipes  # noqa: F401  (registers the baselines and ablations)


register_recipe(Recipe(
    "teacher", "none", None, None,
    description="the unchanged model: the reference row"))
register_recipe(Recipe(
    "rad", "rad", "skip", "ssm-only",
    description="RAD: layers from the Bayesian self-speculative search, skip init (starts as "
    "the draft), only the new Mamba2 parameters trained"))
