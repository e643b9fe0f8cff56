"""The one registry helper, and the facts the registered objects carry."""

from __future__ import annotations

import pytest

import baselines  # noqa: F401  (registers the baselines)
from harness.experiment.config import PROFILES, load_config
from harness.experiment.runner import plan_cells, run_manifest
from harness.models import TEACHERS
from harness.tasks.base import TASKS
from rad.method.distill.losses import LOSSES
from rad.method.distill.trainable import TRAINABLE_POLICIES
from rad.method.recipes import RECIPES, Recipe
from rad.method.replace import INITS
from rad.method.select import OBJECTIVES, SELECTORS
from rad.registry import Registry, UnknownNameError


def test_lookup_names_the_known_choices_in_one_line():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    def b() -> int:
        return 2

    assert reg.get("a") == 1 and reg.get("b") is b and list(reg) == ["a", "b"]
    with pytest.raises(UnknownNameError) as e:
        reg.get("c")
    assert str(e.value) == "unknown widget 'c'; known: a, b"
    assert isinstance(e.value, KeyError)  # callers that catch KeyError keep working
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 3)


def test_every_extension_point_is_a_registry():
    for reg, names in ((TEACHERS, {"smollm2-135m-instruct", "tiny-random"}),
                       (TASKS, {"gsm8k", "math500", "humaneval"}),
                       (SELECTORS, {"rad", "uniform", "random", "all", "profile-top-k",
                                    "kl-guided"}),
                       (INITS, {"kqvo", "skip", "skip-zero"}),
                       (TRAINABLE_POLICIES, {"ssm-only", "all"}),
                       (LOSSES, {"forward-kl", "reverse-kl"}),
                       (OBJECTIVES, {"accepted-length", "tokens-per-s", "teacher-forced"}),
                       (RECIPES, {"teacher", "rad", "plain-distill", "full-ssm", "profile-top-k",
                                  "kl-guided"}),
                       (PROFILES, {"smoke", "cpu", "paper"})):
        assert isinstance(reg, Registry) and names <= set(reg), reg.kind


def test_facts_live_on_the_entries():
    assert SELECTORS.get("rad").reads == "selection" and SELECTORS.get("uniform").reads is None
    assert SELECTORS.get("profile-top-k").reads == "redundancy"
    assert SELECTORS.get("kl-guided").reads == "kl-profile"
    assert SELECTORS.get("all").replaces_all and not SELECTORS.get("random").replaces_all
    assert RECIPES.get("teacher").is_reference and not RECIPES.get("rad").is_reference
    assert TASKS.get("humaneval").executes_code and not TASKS.get("gsm8k").executes_code
    assert TASKS.get("cruxeval_i").executes_code and not TASKS.get("cruxeval").executes_code
    assert not TASKS.get("piqa").generates and TASKS.get("cruxeval").generates
    assert {t: TASKS.get(t).headline for t in TASKS} == {
        "gsm8k": "exact_match_flexible", "math500": "math_verify", "humaneval": "pass@1",
        "cruxeval": "pass@1", "cruxeval_i": "pass@1", "piqa": "acc", "winogrande": "acc",
        "lambada_openai": "acc"}


def test_a_recipe_naming_an_unregistered_part_is_refused():
    with pytest.raises(ValueError, match="unknown selector 'magic'"):
        Recipe("x", "magic", "skip", "ssm-only")
    with pytest.raises(ValueError, match="unknown init 'warm'"):
        Recipe("x", "uniform", "warm", "ssm-only")
    with pytest.raises(ValueError, match="unknown trainable policy 'some'"):
        Recipe("x", "uniform", "skip", "some")


def test_the_run_manifest_carries_what_the_report_reads():
    cfg = load_config("smoke")
    manifest = run_manifest(cfg)
    assert manifest["cells"] == [c.name for c in plan_cells(cfg)]
    assert manifest["cells"].count("teacher-s0") == 1 and "teacher-s1" not in manifest["cells"]
    assert manifest["tasks"]["gsm8k"] == {"label": "GSM8K", "headline": "exact_match_flexible",
                                          "higher_is_better": True}
    assert [m for m, f in manifest["methods"].items() if f["reference"]] == ["teacher"]
