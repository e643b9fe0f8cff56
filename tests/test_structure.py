"""One concept, one place: the layer loop, the Mamba2 token step and the cache's bookkeeping each
have one home, and the compiled step's process-wide state resets as one object."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch
from tiny_models import pair

from rad.method.replace import build_hybrid
from rad.runtime import static_step
from rad.runtime.cache import InferenceCache, replicate
from rad.runtime.decode import draft_budget
from rad.runtime.static_step import GRAPHS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("rad", "baselines", "harness") for p in (ROOT / d).rglob("*.py"))


def _calls(attr: str) -> list[str]:
    """`file:line` of every call of `attr(...)` or `<something>.attr(...)` in the source."""
    hits = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and attr in (getattr(node.func, "attr", None),
                                                       getattr(node.func, "id", None)):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


def test_one_layer_loop_runs_every_mlp():
    # Block.forward is the only place a block's MLP and mixer norm run; Decoder.run_layers the
    # only loop over blocks that calls them (the eager forward, the compiled step and the
    # teacher-forced draft all pass through it).
    assert [h.split(":")[0] for h in _calls("mlp")] == ["rad/runtime/model.py"]
    assert [h.split(":")[0] for h in _calls("mixer_norm")] == ["rad/runtime/model.py"]
    assert [h.split(":")[0] for h in _calls("mlp_norm")] == ["rad/runtime/model.py"]


def test_one_mamba2_token_step():
    # token_step is called from one place (scan_tokens), shared by the eager and compiled paths.
    assert [h.split(":")[0] for h in _calls("token_step")] == ["rad/runtime/mamba2.py"]
    assert [h.split(":")[0] for h in _calls("ssd_step_")] == ["rad/runtime/mamba2.py"]
    assert len(_calls("ssd_step_")) == 1
    assert sorted(h.split(":")[0] for h in _calls("scan_tokens")) == [
        "rad/runtime/mamba2.py", "rad/runtime/static_step.py"]


def test_only_the_cache_and_the_mamba2_state_write_lengths():
    writes = []
    pattern = re.compile(r"\.length\s*(\+|-)?=(?!=)")
    for path in SOURCES:
        for line in path.read_text().splitlines():
            if pattern.search(line):
                writes.append(str(path.relative_to(ROOT)))
    assert set(writes) == {"rad/runtime/cache.py", "rad/runtime/mamba2.py"}, writes


def test_cache_append_is_the_one_entry_point():
    _, model = pair("llama")
    cache = model.allocate_cache(2, 16)
    mask = torch.tensor([[False, True, True], [True, True, True]])
    start, positions, valid = cache.append(mask)
    assert start == 0 and cache.length == 3
    assert positions.tolist() == [[0, 0, 1], [0, 1, 2]]  # padding takes no position
    assert valid.tolist() == mask.tolist() and cache.n_valid.tolist() == [2, 3]
    start, positions, _ = cache.append(torch.ones(2, 1, dtype=torch.bool))
    assert start == 3 and positions.tolist() == [[2], [3]] and cache.length == 4
    try:
        cache.append(torch.ones(2, 13, dtype=torch.bool))
        raise AssertionError("an overfull append must raise")
    except ValueError:
        assert cache.length == 4  # nothing written


def test_draft_budget_counts_rounds_as_decoding_does():
    assert draft_budget(1, 10, 4) == 4
    assert draft_budget(7, 10, 4) == 2  # two drafts + the verifier's own token reach 10
    assert draft_budget(9, 10, 4) == 0
    assert draft_budget(12, 10, 4) == 0


def test_graphs_reset_clears_every_piece_of_state():
    g = static_step.CompiledGraphs()
    g.stats.shapes, g.stats.compile_s, g.stats.compiled_steps = 3, 1.5, 7
    g.steps[(1, "cpu")] = (None, None)
    g.shapes_seen.add(("shape",))
    g.eager_counts[("shape",)] = 2
    g.weights[1] = (None, 0)
    g.drop_graphs()
    # dropping graphs keeps what the process has seen (counts, cost)
    assert not g.steps and not g.shapes_seen and not g.weights
    assert g.eager_counts and g.stats.compiled_steps == 7
    stats = g.stats
    g.reset()
    assert not g.eager_counts and g.stats is stats
    assert (stats.shapes, stats.compile_s, stats.compiled_steps, stats.eager_steps) == (0, 0, 0, 0)
    assert static_step.STATS is GRAPHS.stats  # the benches' handle is the object's own


def test_replicate_copies_every_state_without_naming_fields():
    _, teacher = pair("llama")
    model = build_hybrid(teacher, [1], "kqvo", seed=0)
    one = model.allocate_cache(1, 8, max_rollback=2)
    model(torch.tensor([[3, 4, 5]]), cache=one)
    many = model.allocate_cache(3, 8, max_rollback=2)
    replicate(one, many)
    assert isinstance(many, InferenceCache) and many.length == one.length == 3
    for s, d in zip(one.states, many.states, strict=True):
        assert getattr(d, "length", 3) == 3
        for name in ("k", "v", "conv", "ssm"):
            if hasattr(s, name):
                assert torch.equal(getattr(d, name), getattr(s, name).expand_as(getattr(d, name)))
