"""The one registry helper, and the facts the registered objects carry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import COMMANDS
from harness.experiment.config import PROFILES, load_config
from harness.experiment.runner import Runner, plan_cells, run_manifest
from harness.models import TEACHERS
from harness.tasks.base import TASKS
from rad.method.distill.losses import LOSSES
from rad.method.distill.trainable import TRAINABLE_POLICIES
from rad.method.recipes import RECIPES, Recipe
from rad.method.replace import INITS
from rad.method.select import OBJECTIVES, RECORDS, SELECTORS
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


def test_plugins_load_once_on_the_first_lookup(tmp_path, monkeypatch):
    reg: Registry[int] = Registry("widget", plugins=("widget_plugin_for_test",))
    (tmp_path / "widget_plugin_for_test.py").write_text(
        "import sys\n"
        "REG = sys.modules['__registry_under_test__']\n"
        "REG.loads += 1\n"
        "REG.register('from-plugin', len(REG))  # a lookup while loading sees what is there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "__registry_under_test__", reg)
    monkeypatch.delitem(sys.modules, "widget_plugin_for_test", raising=False)
    reg.loads = 0
    reg.register("own", 1)  # registering loads nothing
    assert reg.loads == 0
    assert reg.get("from-plugin") == 1 and reg.loads == 1
    assert reg.names() == ["own", "from-plugin"] and "own" in reg and len(reg) == 2
    assert reg.loads == 1  # once

    broken: Registry[int] = Registry("gadget", plugins=("no_such_plugin_module_here",))
    for _ in range(2):  # a plugin that fails to import fails every lookup, loudly
        with pytest.raises(ModuleNotFoundError):
            broken.names()


def test_a_bare_import_of_a_registry_knows_the_baselines():
    """A library user's fresh interpreter: nothing imported `baselines` for its side effects."""
    code = ("import sys\n"
            "from rad.method.recipes import get_recipe\n"
            "assert 'baselines.recipes' not in sys.modules\n"
            "r = get_recipe('plain-distill')\n"
            "assert (r.selector, r.trainable) == ('uniform', 'all'), r\n"
            "assert r.layer_selector.name == 'uniform'\n"
            "print('ok')\n")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       timeout=300)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


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
    assert [n for n in RECIPES if not RECIPES.get(n).trains] == ["teacher"]
    assert all(RECIPES.get(n).trains == (RECIPES.get(n).trainable is not None) for n in RECIPES)
    # the step that makes each record is the runner's step and the command of that name
    for kind in RECORDS.values():
        assert kind.step in Runner.RECORD_STEPS and kind.step in COMMANDS, kind
    assert {t: TASKS.get(t).item_id for t in ("gsm8k", "piqa", "humaneval", "cruxeval_i")} == {
        "gsm8k": "doc_id", "piqa": "doc_id", "humaneval": "task_id", "cruxeval_i": "id"}
    assert TASKS.get("gsm8k").item_correct == "correct_flexible"  # as its headline scores
    assert TASKS.get("humaneval").executes_code and not TASKS.get("gsm8k").executes_code
    assert TASKS.get("cruxeval_i").executes_code and not TASKS.get("cruxeval").executes_code
    assert not TASKS.get("piqa").generates and TASKS.get("cruxeval").generates
    assert {t: TASKS.get(t).headline for t in TASKS} == {
        "gsm8k": "exact_match_flexible", "math500": "math_verify", "humaneval": "pass@1",
        "cruxeval": "pass@1", "cruxeval_i": "pass@1", "piqa": "acc", "winogrande": "acc",
        "lambada_openai": "acc"}


def test_a_recipe_naming_an_unregistered_part_is_refused():
    with pytest.raises(ValueError, match="trains nothing replaces nothing"):
        Recipe("x", "uniform", "skip", None)
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
