"""The experiment harness: profiles, the runner (resume, determinism), the report, the gate."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_models import one_error_line, shared_data

from harness.experiment.config import PROFILES_DIR, config_from_dict, load_config, profile_names
from harness.experiment.runner import plan_cells
from harness.report import plots, run_report, stats
from harness.report.gate import run_gate
from harness.report.schema import CELLS_DIR, SCHEMA, STEP_FILE
from rad.method.select import profile_top_k

QUALITY = ("gsm8k", "math500", "humaneval", "heldout_kl", "heldout_kl_start", "state_bytes",
           "eval_n")


def _env() -> dict:
    return dict(os.environ, RAD_DATA_DIR=str(shared_data()),
                RAD_ALLOW_CODE_EXECUTION="1", PYTHONUNBUFFERED="1")


def _reproduce(out: Path, log: Path) -> subprocess.Popen:
    """`rad reproduce --profile smoke` in its own process group, output to `log` (a pipe
    nobody reads would fill up and stall it)."""
    with open(log, "a") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "reproduce", "--profile", "smoke", "--out",
             str(out)], env=_env(), stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=900)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One uninterrupted smoke run, in a subprocess (the runner sets process-wide torch
    state: threads, denormal flushing). conftest.py marks every test that uses it slow."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    log = out.with_name("log.txt")
    _finish(_reproduce(out, log), log)
    return out


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# -- end to end ----------------------------------------------------------------------------------
def test_smoke_profile_produces_every_table_and_plot(smoke_run):
    cfg = load_config("smoke")
    for name in run_report.REPORT_FILES:
        assert (smoke_run / name).stat().st_size > 0, name
    for png in ("pareto.png", "convergence.png", "redundancy.png"):
        assert (smoke_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = _results(smoke_run)
    assert res["schema"] == SCHEMA and res["profile"] == "smoke" and res["complete"]
    assert [r["method"] for r in res["leaderboard"]] == cfg.methods
    names = {f"{c['method']}-s{c['seed']}" for c in res["cells"]}
    assert names == {c.name for c in plan_cells(cfg)}
    for cell in res["cells"]:
        m = cell["metrics"]
        assert all(m[t] is not None and 0 <= m[t] <= 1 for t in cfg.eval.tasks)
        assert m["decode_tok_s"] > 0 and m["speedup"] > 0 and m["state_bytes"] > 0
        assert m["eval_n"] == cfg.eval.limit
        # provenance a reader needs to trust a cell
        assert {"git_commit", "packages"} <= cell["provenance"].keys()
        assert cell["config_hash"] == cfg.config_hash() and cell["dtype"] == "fp32"
        assert cell["device"] == "cpu" and all("wall_s" in s for s in cell["steps"].values())
        assert (smoke_run / CELLS_DIR / f"{cell['method']}-s{cell['seed']}.json").exists()
        if cell["method"] != "teacher":
            assert len(cell["layers"]) == (4 if cell["method"] == "full-ssm" else cfg.k)
    teacher = next(c for c in res["cells"] if c["method"] == "teacher")["metrics"]
    assert teacher["heldout_kl"] == 0 and teacher["state_bytes"] == teacher["base_state_bytes"]
    full = next(c for c in res["cells"] if c["method"] == "full-ssm")["metrics"]
    assert full["state_bytes"] < teacher["state_bytes"]  # no KV cache left
    # the search runs per seed (its seed is the cell's): each rad cell has its own selection
    sels = {sel["seed"]: sel for sel in res["selections"]}
    assert sorted(sels) == cfg.seeds_for("rad")
    for rad in (c for c in res["cells"] if c["method"] == "rad"):
        assert rad["layers"] == sels[rad["seed"]]["layers"]
        assert rad["steps"]["select"]["key"] != next(
            c for c in res["cells"] if c["method"] == "rad" and c["seed"] != rad["seed"]
        )["steps"]["select"]["key"]
    # the field's selectors choose from the records their steps measured
    top = [c for c in res["cells"] if c["method"] == "profile-top-k"]
    assert top and all(c["layers"] == profile_top_k(res["redundancy"], cfg.k) for c in top)
    kl = [c for c in res["cells"] if c["method"] == "kl-guided"]
    benefit = {e["layer"]: e["benefit"] for e in res["kl_profile"]["layers"]}
    for c in kl:
        kept = set(benefit) - set(c["layers"])
        assert min(benefit[i] for i in kept) >= max(benefit[i] for i in c["layers"])
    assert res["kl_profile"]["split"] == "train"
    assert len([c for c in res["cells"] if c["method"] == "random-swap"]) == len(
        cfg.seeds_for("random-swap")) > len(cfg.seeds)
    md = (smoke_run / "LEADERBOARD.md").read_text()
    for method in cfg.methods:
        assert f"| {method}" in md
    assert "## Verdict" in md and "RAD beats plain distillation" in md
    csv_lines = (smoke_run / "leaderboard.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,n_seeds,gsm8k_mean,gsm8k_std")
    assert len(csv_lines) == 1 + len(cfg.methods)
    assert set(res["curves"]) == {f"{m}-s{s}" for m in cfg.methods if m != "teacher"
                                  for s in cfg.seeds_for(m)}
    claims = {v["claim"] for v in res["verdict"]}
    assert {"selection beats KL-guided selection (same init and training)",
            "selection beats the profile's top-k layers (same init and training)"} <= claims
    assert any(c.startswith("BO beats the profile's top-k") for c in claims)


def _finished_steps(run: Path) -> dict[str, int]:
    """step folder -> mtime of its step.json, for every finished step."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (run / "steps").glob(f"*/{STEP_FILE}")}


def _quality(res: dict) -> dict:
    return {(c["method"], c["seed"]): ({k: c["metrics"][k] for k in QUALITY}, c["layers"])
            for c in res["cells"]}


def test_killed_run_resumes_to_identical_results_without_redoing_cells(smoke_run, tmp_path):
    """SIGKILL the runner once a few cells are done, re-run: finished steps are not redone,
    and every quality metric equals the uninterrupted run's (same profile + seeds ->
    identical quality metrics)."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    proc = _reproduce(out, log)
    deadline = time.time() + 600
    while len(list((out / CELLS_DIR).glob("*.json"))) < 3:
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_cells = {p.stem for p in (out / CELLS_DIR).glob("*.json")}
    finished = _finished_steps(out)
    assert 3 <= len(done_cells) < len(plan_cells(load_config("smoke")))
    assert not (out / "results.json").exists()

    log.write_text("")
    text = _finish(_reproduce(out, log), log)
    after = _finished_steps(out)
    assert all(after[name] == mtime for name, mtime in finished.items())  # nothing redone
    assert text.count("finished earlier") >= len(finished)
    assert _quality(_results(out)) == _quality(_results(smoke_run))


def test_report_rebuilds_the_same_tables(smoke_run, tmp_path, cli):
    r = cli("report", str(smoke_run), "--out", str(tmp_path))
    assert r.rc == 0, r.err
    a, b = _results(smoke_run), _results(tmp_path)
    assert a["leaderboard"] == b["leaderboard"] and a["verdict"] == b["verdict"]
    assert (tmp_path / "leaderboard.csv").read_text() == (smoke_run / "leaderboard.csv").read_text()


# -- atomic writes -------------------------------------------------------------------------------
def test_a_crash_mid_write_leaves_the_previous_report_whole(smoke_run, tmp_path, monkeypatch):
    cli_out = tmp_path / "report"
    run_report.write_report(smoke_run, cli_out)
    before = {p.name: p.read_bytes() for p in cli_out.iterdir()}
    real_write_text = Path.write_text

    def half_write(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt  # the process dies half-way through the file

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(KeyboardInterrupt):
        run_report.write_report(smoke_run, cli_out)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    monkeypatch.setattr(plots.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError):  # the plots: the rename fails after the image is drawn
        plots.plot_pareto(_results(smoke_run), cli_out / "pareto.png")
    assert {p.name: p.read_bytes() for p in cli_out.iterdir()
            if not p.name.startswith(".")} == before
    json.loads((cli_out / "results.json").read_text())  # still whole
    assert not [p for p in cli_out.iterdir() if p.name.startswith(".") and "results" in p.name]


# -- gate ----------------------------------------------------------------------------------------
def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def _row(res: dict, method: str) -> dict:
    return next(r for r in res["leaderboard"] if r["method"] == method)["metrics"]


@pytest.fixture
def gate_files(smoke_run, tmp_path):
    base = _results(smoke_run)
    return base, tmp_path / "baseline.json", tmp_path / "current.json"


def test_gate_passes_on_identical_results(gate_files, capsys):
    base, a, b = gate_files
    assert run_gate(_write(a, base), _write(b, base)) == 0
    assert "no regression" in capsys.readouterr().out


@pytest.mark.parametrize("plant", ["accuracy", "throughput", "kl"])
def test_gate_fails_on_a_planted_regression(gate_files, plant, capsys):
    base, a, b = gate_files
    cur = copy.deepcopy(base)
    if plant == "accuracy":  # the baseline solved a problem the current run does not
        _row(base, "rad")["humaneval"]["mean"] = 0.5
    elif plant == "throughput":
        _row(cur, "rad")["speedup"]["mean"] *= 0.3
    else:
        _row(cur, "rad")["heldout_kl"]["mean"] *= 1.5
    assert run_gate(_write(a, base), _write(b, cur)) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "1 regression" in out


def test_gate_tolerates_timing_noise_within_the_config(gate_files):
    base, a, b = gate_files
    cur = copy.deepcopy(base)
    _row(cur, "rad")["speedup"]["mean"] *= 1 - base["config"]["gate"]["speedup_drop"] / 2
    assert run_gate(_write(a, base), _write(b, cur)) == 0


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(schema="something/else"), "schema"),
    (lambda r: r.update(profile="cpu"), "profile mismatch"),
    (lambda r: r["config"]["eval"].update(limit=3), "eval.limit"),
    (lambda r: r.update(leaderboard=[x for x in r["leaderboard"] if x["method"] != "full-ssm"]),
     "no 'full-ssm' row"),
])
def test_gate_refuses_results_it_cannot_compare(gate_files, cli, change, message):
    base, a, b = gate_files
    cur = copy.deepcopy(base)
    change(cur)
    r = cli("gate", "--baseline", str(_write(a, base)), "--current", str(_write(b, cur)))
    assert r.rc == 2 and message in one_error_line(r.err)
    b.write_text("{not json")
    r = cli("gate", "--baseline", str(a), "--current", str(b))
    assert r.rc == 2 and "cannot read current" in one_error_line(r.err)


# -- configs and bad input -----------------------------------------------------------------------
def test_shipped_profiles_validate():
    assert {"smoke", "cpu", "paper"} <= set(profile_names())
    for name in profile_names():
        cfg = load_config(name)
        assert cfg.profile == name and "teacher" in cfg.methods and len(cfg.seeds) >= 2
        assert {"rad", "plain-distill", "random-swap", "full-ssm"} <= set(cfg.methods)
    assert load_config("cpu").model == "smollm2-135m-instruct" and load_config("cpu").k == 15


def _smoke_dict() -> dict:
    return yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(stpes=3), "unknown key 'stpes'"),
    (lambda d: d["distill"].update(stpes=3), "config.distill: unknown key 'stpes'"),
    (lambda d: d["distill"].update(steps="many"), "config.distill.steps: expected int"),
    (lambda d: d.update(methods=["teacher", "rad", "magic"]), "unknown method 'magic'"),
    (lambda d: d["eval"].update(tasks=["gsm8k", "mmlu"]), "unknown task 'mmlu'"),
    (lambda d: d.update(seeds=[]), "at least one seed"),
    (lambda d: d.pop("model"), "missing key 'model'"),
    (lambda d: d["bench"].update(batch=0), "bench.batch must be >= 1"),
    (lambda d: d.update(method_seeds={"magic": [0]}), "method_seeds names 'magic'"),
    (lambda d: d.update(method_seeds={"rad": [1, 1]}), "method_seeds.rad needs distinct"),
    (lambda d: d.update(method_seeds=[0]), "config.method_seeds: expected a mapping"),
    (lambda d: d["selection"].update(sampler="magic"), "selection.sampler must be one of"),
    (lambda d: d["selection"].update(kl_rows=999), "selection.kl_rows must be <="),
])
def test_config_validation_names_the_problem(edit, message):
    d = _smoke_dict()
    edit(d)
    with pytest.raises(Exception) as e:
        config_from_dict(d)
    assert message in str(e.value)


def _bad_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--profile", "{tmp}/missing.yaml"], "does not exist"),
    (["--profile", "{bad}"], "invalid YAML at line 2"),
    (["--profile", "{unknown_key}"], "unknown key 'sedes'"),
    (["--profile", "smoke"], "execute code on model output"),  # HumanEval needs the opt-in
])
def test_reproduce_bad_input_is_one_line_and_writes_nothing(tmp_path, cli, monkeypatch, argv,
                                                            message):
    monkeypatch.delenv("RAD_ALLOW_CODE_EXECUTION", raising=False)
    d = _smoke_dict()
    d["sedes"] = d.pop("seeds")
    subs = {"tmp": str(tmp_path), "bad": _bad_yaml(tmp_path, "profile: x\n  methods: [a\n"),
            "unknown_key": _bad_yaml(tmp_path / "..", yaml.safe_dump(d))}
    out = tmp_path / "out"
    r = cli("reproduce", *[a.format(**subs) for a in argv], "--out", str(out))
    assert r.rc == 2 and message in one_error_line(r.err)
    assert not out.exists()


def test_reproduce_refuses_missing_data_and_a_gpu_profile_without_gpu(tmp_path, cli,
                                                                       monkeypatch):
    data = str(shared_data())
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("RAD_DATA_DIR", str(empty))
    out = tmp_path / "out"
    r = cli("reproduce", "--profile", "smoke", "--out", str(out), "--allow-code-execution")
    assert r.rc == 2 and "RAD_DATA_DIR" in one_error_line(r.err) and not out.exists()
    monkeypatch.setenv("RAD_DATA_DIR", data)
    r = cli("reproduce", "--profile", "paper", "--out", str(out), "--allow-code-execution")
    assert r.rc == 2 and "no GPU" in one_error_line(r.err) and not out.exists()


def test_reproduce_refuses_a_run_folder_of_another_config(smoke_run, tmp_path, cli):
    d = _smoke_dict()
    d["distill"]["steps"] = 7
    other = _bad_yaml(tmp_path, yaml.safe_dump(d))
    before = (smoke_run / "results.json").read_bytes()
    r = cli("reproduce", "--profile", other, "--out", str(smoke_run), "--allow-code-execution")
    assert r.rc == 2 and "another config" in one_error_line(r.err)
    assert (smoke_run / "results.json").read_bytes() == before


# -- pieces --------------------------------------------------------------------------------------
def test_verdict_compare_statuses():
    def s(*values):
        import statistics
        return {"mean": statistics.fmean(values), "values": list(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    assert stats.compare(s(1.0, 1.1), s(2.0, 2.1), False)["status"] == "reproduced"
    assert stats.compare(s(1.0, 1.4), s(1.3, 1.5), False)["status"].startswith("direction")
    assert stats.compare(s(2.0, 2.1), s(1.0, 1.1), False)["status"] == "not reproduced"
    assert stats.compare(s(0.5), s(0.4), True, floor=0.2)["status"].startswith("direction")


def _selection(seed, best, layers, top, uniform):
    return {"seed": seed, "score": best, "layers": layers, "objective": "teacher-forced",
            "trials": 500, "warm_starts": {"profile-top-k": {"layers": [0, 1], "score": top},
                                           "uniform": {"layers": [1, 3], "score": uniform}}}


def test_search_claims_follow_each_seeds_best_against_its_warm_starts():
    from harness.report.verdict import _search_claims

    better = _search_claims([_selection(0, 1.5, [2, 3], 1.2, 0.1),
                             _selection(1, 1.4, [2, 4], 1.2, 0.1)])
    bo, draft = better
    assert bo["claim"].startswith("BO beats the profile's top-k") and bo["status"] == "reproduced"
    assert bo["margin"] == pytest.approx(0.25) and bo["spread"] == pytest.approx(0.05)
    assert draft["claim"].startswith("selected draft beats the uniform draft")
    # the search kept its warm start in every seed: no margin, not reproduced, and said so
    kept = _search_claims([_selection(s, 1.2, [0, 1], 1.2, 0.1) for s in (0, 1)])[0]
    assert kept["status"] == "not reproduced" and "kept the profile-top-k set in 2 of 2" in \
        kept["detail"]
    # seeds disagree: one better, one equal -> inside the spread
    mixed = _search_claims([_selection(0, 1.6, [2, 3], 1.2, 0.1),
                            _selection(1, 1.2, [0, 1], 1.2, 0.1)])[0]
    assert mixed["status"].startswith("direction only")
    assert _search_claims([]) == []


def test_bench_pair_against_itself_and_a_hybrid():
    from tiny_models import pair

    from harness.experiment.bench_throughput import bench_pair
    from rad.method.replace import build_hybrid

    _, model = pair("llama")
    alone = bench_pair(model, None, context=32, batch=2, new_tokens=2, repeats=2)
    assert alone["speedup"] == 1.0 and alone["model"] == alone["base"]
    hybrid = build_hybrid(model, [0, 2], "kqvo", 0)
    pair = bench_pair(model, hybrid, context=32, batch=2, new_tokens=2, repeats=2)
    assert pair["model"]["mamba_layers"] == 2 and pair["base"]["mamba_layers"] == 0
    assert len(pair["speedup_runs"]) == 2 and pair["speedup"] > 0
    assert pair["model"]["state_bytes"] != pair["base"]["state_bytes"]


def test_data_files_the_cli_reads_are_packaged():
    """`rad` in tox runs from an installed wheel: a profile or task config that is not in
    pyproject's package-data exists in the checkout and nowhere else (CI caught this once)."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(run_report.__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["harness"]
    paths = [*(root / "harness/experiment/profiles").glob("*"),
             *(root / "harness/tasks").glob("*.yaml")]
    assert len(paths) >= 7  # 3 profiles, 4 task configs
    for path in paths:
        rel = str(path.relative_to(root / "harness"))
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not in package-data"


def test_a_committed_run_folder_reports_without_its_step_folders(smoke_run, tmp_path, cli):
    """results/<profile>/ is committed without steps/ (hybrids, checkpoints): `rad report`
    must still rebuild it, from the results.json it holds, and say so when it cannot."""
    import shutil

    copy_ = tmp_path / "committed"
    shutil.copytree(smoke_run, copy_, ignore=shutil.ignore_patterns("steps"))
    r = cli("report", str(copy_), "--out", str(tmp_path / "again"))
    assert r.rc == 0, r.err
    a, b = _results(smoke_run), _results(tmp_path / "again")
    for key in ("leaderboard", "curves", "selections", "redundancy", "kl_profile", "verdict"):
        assert a[key] == b[key], key
    (copy_ / "results.json").unlink()
    r = cli("report", str(copy_), "--out", str(tmp_path / "third"))
    assert r.rc == 2 and "is missing" in one_error_line(r.err)
