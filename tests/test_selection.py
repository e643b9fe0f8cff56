"""Selectors, top-k, the resumable Bayesian search, and the diagnose/select commands."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import ours_from_hf, tiny_hf

from baselines.selectors.kl_guided import restore_one_kl
from harness.cli import main
from rad.method.distill.loop import heldout_kl
from rad.method.distill.losses import teacher_targets
from rad.method.select import (
    SELECTORS,
    SearchSpec,
    SelectionRequest,
    Selector,
    bayesian_select,
    get_selector,
    mask_for,
    top_k,
)


@given(n=st.integers(1, 64), data=st.data())
def test_selectors_return_k_distinct_layers_deterministically(n, data):
    k = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 10**6))
    for name in ("uniform", "random"):
        layers = get_selector(name)(SelectionRequest(n, k, seed))
        assert len(layers) == k == len(set(layers))
        assert all(0 <= i < n for i in layers) and layers == sorted(layers)
        assert layers == get_selector(name)(SelectionRequest(n, k, seed))
    assert get_selector("all")(SelectionRequest(n, n, seed)) == list(range(n))


def test_uniform_is_the_mambainllama_interleave():
    assert get_selector("uniform")(SelectionRequest(30, 15)) == list(range(1, 30, 2))
    assert get_selector("uniform")(SelectionRequest(8, 2)) == [2, 6]


def test_random_depends_on_seed_and_bad_k_is_refused():
    a = get_selector("random")(SelectionRequest(30, 15, seed=0))
    b = get_selector("random")(SelectionRequest(30, 15, seed=1))
    assert a != b
    for k in (0, 31, -1):
        with pytest.raises(ValueError, match="k must be"):
            SelectionRequest(30, k)
    with pytest.raises(ValueError, match="every layer"):
        get_selector("all")(SelectionRequest(30, 15))
    with pytest.raises(KeyError, match="unknown selector"):
        get_selector("nope")
    assert "rad" in {*SELECTORS, "rad"} and callable(get_selector("rad"))


# Values on a coarse grid (ties included) so the rescalings below stay strictly monotone in floats.
@given(x=st.lists(st.integers(-40, 40).map(lambda i: i / 8), min_size=1, max_size=40),
       data=st.data())
def test_top_k_is_invariant_to_monotone_rescaling(x, data):
    k = data.draw(st.integers(1, len(x)))
    chosen = top_k(x, k)
    assert len(chosen) == k == len(set(chosen))
    for f in (lambda v: 3 * v + 1, lambda v: math.exp(v), lambda v: v ** 3):
        assert top_k([f(v) for v in x], k) == chosen
    # every chosen entry is >= every unchosen one
    rest = [x[i] for i in range(len(x)) if i not in chosen]
    assert not rest or min(x[i] for i in chosen) >= max(rest)


def test_mask_for_warm_start_round_trips():
    point = mask_for([2, 5, 7], 10)
    assert top_k([point[f"x{i}"] for i in range(10)], 3) == [2, 5, 7]


def _score(skip: frozenset) -> float:
    # A fixed landscape with one best set: layers 1, 4, 6 are the "redundant" ones.
    return sum(1.0 if i in (1, 4, 6) else -0.1 * i for i in skip)


class Interrupt(Exception):
    pass


def test_search_resumes_to_the_same_number_of_trials(tmp_path):
    calls: list[frozenset] = []

    def evaluate(skip):
        calls.append(skip)
        return _score(skip)

    spec = SearchSpec(8, 3, trials=12, seed=0, storage=f"sqlite:///{tmp_path}/a.db",
                      study_name="s")
    full = bayesian_select(evaluate, spec, {"uniform": [1, 4, 6]}, progress=False)
    assert full["trials"] == 12
    assert len(calls) == full["distinct_sets_measured"] == len(set(calls))  # no re-measuring
    assert full["layers"] == [1, 4, 6] and full["score"] == pytest.approx(3.0)
    assert full["warm_starts"]["uniform"] == {"layers": [1, 4, 6], "score": pytest.approx(3.0)}

    killed_spec = SearchSpec(8, 3, 12, 0, f"sqlite:///{tmp_path}/b.db", "s")
    n = {"calls": 0}

    def dies_on_fifth(skip):
        n["calls"] += 1
        if n["calls"] == 5:
            raise Interrupt
        return _score(skip)

    with pytest.raises(Interrupt):
        bayesian_select(dies_on_fifth, killed_spec, {"uniform": [0, 1, 2]}, progress=False)
    resumed = bayesian_select(_score, killed_spec, {"uniform": [0, 1, 2]}, progress=False)
    assert resumed["trials"] == full["trials"] == 12
    assert len(resumed["layers"]) == 3


# -- commands on the tiny random teacher -----------------------------------------------------
TINY = ["--model", "tiny-random", "--prompts", "gsm8k-train:2", "--max-new-tokens", "6"]


def test_diagnose_and_select_write_their_files(tmp_path):
    out = tmp_path / "run"
    assert main(["diagnose", *TINY, "--out", str(out)]) == 0
    profile = json.loads((out / "redundancy.json").read_text())
    assert [e["layer"] for e in profile["layers"]] == [0, 1, 2, 3]
    assert all(0 <= e["acceptance_rate"] <= 1 for e in profile["layers"])
    assert (out / "redundancy.png").read_bytes()[:4] == b"\x89PNG"
    assert len(profile["prompt_sha256"]) == 64

    args = ["select", *TINY, "--k", "2", "--trials", "3", "--out", str(out),
            "--redundancy", str(out / "redundancy.json")]
    assert main(args) == 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["k"] == 2 and len(sel["layers"]) == 2 == len(set(sel["layers"]))
    assert sel["trials"] == 3 and set(sel["warm_starts"]) == {"uniform", "profile-top-k"}
    assert sel["prompt_sha256"] == profile["prompt_sha256"]
    args[args.index("--trials") + 1] = "5"  # the same study, resumed and extended
    assert main(args) == 0
    assert json.loads((out / "selection.json").read_text())["trials"] == 5

    assert main(["compare-sets", *TINY, "--k", "2", "--out", str(out), "--repeats", "2",
                 "--random", "2", "--selection", str(out / "selection.json"),
                 "--redundancy", str(out / "redundancy.json")]) == 0
    cmp = json.loads((out / "selection_comparison.json").read_text())
    names = [r["set"] for r in cmp["rows"]]
    assert names == ["bayesian", "uniform", "profile-top-k", "profile-bottom-k", "random-0",
                     "random-1"]
    for r in cmp["rows"]:
        assert len(r["speedup_runs"]) == 2 and r["speedup_vs_greedy"] > 0
        assert 0 <= r["acceptance_rate"] <= 1 and len(r["layers"]) == 2
        # fp32 on a tiny model: the simulation may differ from decoding only on argmax ties
        assert abs(r["teacher_forced"]["mean_accepted_length"]
                   - r["mean_accepted_length"]) <= 1.0
    v = cmp["validation"]
    assert v["rows"] == len({tuple(r["layers"]) for r in cmp["rows"]})
    assert 0 <= v["exact_rows"] <= v["rows"]
    table = (out / "selection_comparison.md").read_text()
    assert table.count("\n| ") == 1 + len(names)  # header + one row per set


@pytest.mark.parametrize("bad", [
    ["--k", "0"], ["--k", "5"], ["--k", "2", "--prompts", "gsm8k-train:0"],
    ["--k", "2", "--prompts", "nope:3"], ["--k", "2", "--trials", "0"],
])
def test_select_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, bad):
    out = tmp_path / "out"
    assert main(["select", *TINY, "--out", str(out), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rad: error:")
    assert not out.exists()


def test_select_unwritable_output_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["select", *TINY, "--k", "2", "--out", str(blocker / "out")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_select_unwritable_storage_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "out"
    args = ["select", *TINY, "--k", "2", "--out", str(out),
            "--storage", f"sqlite:///{blocker}/study.db"]
    assert main(args) == 2
    assert "not writable" in capsys.readouterr().err
    assert not out.exists()


def test_teacher_forced_search_matches_decoding_search(tmp_path):
    """The teacher-forced objective scores every trial as real decoding would: same study seed,
    same sets, same scores (the tiny model in fp32 has no argmax ties on these prompts)."""
    runs = {}
    for objective in ("accepted-length", "teacher-forced"):
        out = tmp_path / objective
        assert main(["select", *TINY, "--k", "2", "--trials", "6", "--out", str(out),
                     "--objective", objective]) == 0
        sel = json.loads((out / "selection.json").read_text())
        runs[objective] = (sel["layers"], sel["score"], sel["objective"])
    assert runs["accepted-length"][:2] == runs["teacher-forced"][:2]
    assert runs["teacher-forced"][2] == "teacher-forced"


def test_teacher_forced_refuses_adaptive_stop(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["select", *TINY, "--k", "2", "--out", str(out), "--objective",
                 "teacher-forced", "--stop-threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fixed gamma" in err[0]
    assert not out.exists()


def test_random_sampler_explores_and_records_its_curve(tmp_path):
    out = tmp_path / "random"
    assert main(["select", *TINY, "--k", "2", "--trials", "6", "--out", str(out),
                 "--objective", "teacher-forced", "--sampler", "random"]) == 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["sampler"] == "random" and len(sel["best_so_far"]) == 6
    assert sel["best_so_far"] == sorted(sel["best_so_far"])  # best-so-far never falls
    assert sel["best_so_far"][-1] == sel["score"]


# -- the field's selectors: each reads its measurement record ------------------------------------
@given(n=st.integers(1, 40), data=st.data())
def test_field_selectors_return_k_distinct_layers_from_their_records(n, data):
    k = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 1000))
    score = st.integers(-20, 20).map(lambda i: i / 8)  # ties included
    acceptance = data.draw(st.lists(score, min_size=n, max_size=n))
    benefit = data.draw(st.lists(score, min_size=n, max_size=n))
    records = {"profile-top-k": {"layers": [{"layer": i, "acceptance_rate": a}
                                            for i, a in enumerate(acceptance)]},
               "kl-guided": {"layers": [{"layer": i, "benefit": b}
                                        for i, b in enumerate(benefit)]}}
    for name, record in records.items():
        req = SelectionRequest(n, k, seed, context={"record": record})
        layers = get_selector(name)(req)
        assert len(layers) == k == len(set(layers)) and layers == sorted(layers)
        assert all(0 <= i < n for i in layers)
        assert layers == get_selector(name)(SelectionRequest(n, k, seed + 1,
                                                             context={"record": record}))
        rest = [i for i in range(n) if i not in layers]
        if name == "profile-top-k":  # skipped alone, these cost the least acceptance
            assert not rest or min(acceptance[i] for i in layers) >= max(acceptance[i]
                                                                         for i in rest)
        else:  # restored alone, these lower the KL the least: they are the ones replaced
            assert not rest or max(benefit[i] for i in layers) <= min(benefit[i] for i in rest)


def test_selector_entries_state_what_they_read():
    reads = {name: get_selector(name).reads for name in SELECTORS}
    assert reads["rad"] == "selection" and reads["profile-top-k"] == "redundancy"
    assert reads["kl-guided"] == "kl-profile" and reads["uniform"] is None
    assert get_selector("rad").seeded_record and not get_selector("kl-guided").seeded_record
    with pytest.raises(ValueError, match="not 3 layers|chose k=2"):
        get_selector("rad")(SelectionRequest(8, 3, context={"record": {"k": 2,
                                                                       "layers": [1, 2]}}))


def test_a_selector_returning_a_wrong_set_is_refused():
    bad = Selector("bad", lambda req: [0, 0, 1])
    with pytest.raises(ValueError, match="not 3 distinct layers"):
        bad(SelectionRequest(8, 3))


def test_restore_one_kl_is_the_skip_models_kl_with_one_layer_back():
    model = ours_from_hf(tiny_hf("llama"), dtype=torch.float64)
    torch.manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 12))
    with torch.no_grad():
        targets = teacher_targets(model(ids), k=8)
    record = restore_one_kl(model, ids, targets, batch_size=2, progress=False)
    n = model.cfg.n_layers
    everything = frozenset(range(n))
    assert record["all_skipped_kl"] == pytest.approx(heldout_kl(model, ids, targets,
                                                                skip=everything))
    assert record["all_skipped_kl"] > 0
    assert [e["layer"] for e in record["layers"]] == list(range(n))
    for e in record["layers"]:
        assert e["kl"] == pytest.approx(heldout_kl(model, ids, targets,
                                                   skip=everything - {e["layer"]}))
        assert e["benefit"] == pytest.approx(record["all_skipped_kl"] - e["kl"])
    # no attention skipped is the teacher itself: KL 0 (the bucketed KL of a model to itself)
    assert heldout_kl(model, ids, targets) == pytest.approx(0.0, abs=1e-9)


def test_kl_profile_then_distill_kl_guided(tmp_path):
    out = tmp_path / "kl"
    data = ["--seq-len", "16", "--train-seqs", "4", "--heldout-seqs", "2", "--topk", "8"]
    assert main(["kl-profile", "--model", "tiny-random", "--rows", "2", *data,
                 "--out", str(out)]) == 0
    record = json.loads((out / "kl_profile.json").read_text())
    assert record["record"] == "kl-profile" and record["split"] == "train"
    assert record["rows"] == 2 and len(record["layers"]) == 4
    expected = get_selector("kl-guided")(SelectionRequest(4, 2, context={"record": record}))
    run = tmp_path / "run"
    assert main(["distill", "--model", "tiny-random", "--method", "kl-guided", "--k", "2",
                 "--selection", str(out / "kl_profile.json"), "--steps", "2", *data,
                 "--eval-every", "1", "--out", str(run)]) == 0
    assert json.loads((run / "distill.json").read_text())["layers"] == expected


@pytest.mark.parametrize("bad", [["--rows", "0"], ["--rows", "5"], ["--seq-len", "0"]])
def test_kl_profile_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, bad):
    out = tmp_path / "out"
    assert main(["kl-profile", "--model", "tiny-random", "--train-seqs", "4", "--out", str(out),
                 *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rad: error:")
    assert not out.exists()


def test_compare_samplers_writes_curves_per_sampler_and_seed(tmp_path):
    out = tmp_path / "samplers"
    diag = tmp_path / "diag"
    assert main(["diagnose", *TINY, "--objective", "teacher-forced", "--out", str(diag)]) == 0
    assert json.loads((diag / "redundancy.json").read_text())["measured_by"] == "teacher-forced"
    assert main(["compare-samplers", *TINY, "--k", "2", "--trials", "5", "--objective",
                 "teacher-forced", "--samplers", "tpe,cmaes,random", "--seeds", "0,1",
                 "--redundancy", str(diag / "redundancy.json"), "--out", str(out)]) == 0
    result = json.loads((out / "sampler_curves.json").read_text())
    assert [(r["sampler"], r["seed"]) for r in result["runs"]] == [
        (s, seed) for s in ("tpe", "cmaes", "random") for seed in (0, 1)]
    for r in result["runs"]:
        assert len(r["best_so_far"]) == 5 == len(r["distinct_so_far"])
        assert r["best_so_far"] == sorted(r["best_so_far"]) and r["best_so_far"][-1] == r["score"]
        assert r["distinct_so_far"][-1] == r["distinct_sets_measured"] <= 5
    assert set(result["reference_sets"]) == {"uniform", "profile-top-k"}
    assert (out / "sampler_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "Beats the profile's top-k" in (out / "sampler_curves.md").read_text()


def test_compare_samplers_refuses_an_unknown_sampler(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare-samplers", *TINY, "--k", "2", "--samplers", "tpe,magic",
                 "--out", str(out)]) == 2
    assert "unknown sampler 'magic'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("bad", [["--k", "9"], ["--k", "2", "--trials", "0"],
                                 ["--k", "2", "--seeds", ","]])
def test_compare_samplers_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, bad):
    out = tmp_path / "out"
    assert main(["compare-samplers", *TINY, "--out", str(out), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rad: error:")
    assert not out.exists()
