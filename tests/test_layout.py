"""The layout's promises, checked on the source itself (ast, nothing imported):

- no import cycles between project modules;
- no project import inside a function (an in-function import hides a cycle or a layering
  break; only third-party heavy or optional dependencies may be imported late);
- imports flow one way: runtime <- method <- baselines <- models <- tasks <- experiment <- cli,
  and report needs only the shared utilities;
- `rad gate` and `rad report` run on committed results with torch unimportable.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rad", "baselines", "harness")

# Layers, bottom up: a module may import its own layer and the layers below it only.
LAYERS = [
    ("rad.registry", "rad.digest", "rad.files", "harness.common"),  # shared, torch-free
    ("rad.runtime",),
    ("rad.method",),
    ("baselines",),
    ("harness.models",),
    ("harness.report",),  # presentation: JSON in, files out (checked apart below)
    ("harness.tasks",),
    ("harness.experiment",),
    ("harness.cli",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (a `from pkg import sub` may name a submodule)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(project modules imported at module level, in-function project imports as (line, name))."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    late: list[tuple[int, str]] = []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level or not node.module:
            return []  # the project uses absolute imports only
        # `from pkg import name`: the submodule `pkg.name` where there is one, else `pkg`
        return [f"{node.module}.{a.name}" for a in node.names]

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # type names only: never executed
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found = {m for t in targets(child) if (m := _resolve(t))}
                if in_function:
                    late.extend((child.lineno, m) for m in sorted(found))
                else:
                    top.update(found)
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, late


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def test_the_walker_sees_the_imports():
    """The checks below are only as good as the walk: it must see known edges."""
    assert "rad.runtime.model" in GRAPH["rad.runtime.decode"][0]
    assert "rad.method.select" in GRAPH["baselines.selectors.uniform"][0]
    assert "harness.tasks.data" in GRAPH["harness.tasks.gsm8k"][0]
    assert len(MODULES) > 60


def test_no_import_cycles():
    graph = {m: {d for d in deps if d != m} for m, (deps, _) in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_project_imports_inside_functions():
    late = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {dep}"
            for m, (_, imports) in GRAPH.items() for line, dep in imports]
    assert not late, "in-function project imports:\n" + "\n".join(late)


def test_imports_flow_one_way():
    wrong = [f"{m} ({_layer(m)}) imports {d} ({_layer(d)})"
             for m, (deps, _) in GRAPH.items() for d in deps if _layer(d) > _layer(m)]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_report_needs_only_shared_utilities():
    allowed = ("harness.report", "harness.common")
    for m, (deps, _) in GRAPH.items():
        if m.startswith("harness.report") or m == "harness.cli.results":
            bad = [d for d in deps if not d.startswith(allowed) and d != "harness.cli.args"]
            assert not bad, f"{m} imports {bad}"


def test_every_cli_command_names_an_existing_module():
    from harness.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        assert module in MODULES, (name, module)
        assert "add_parser" in MODULES[module].read_text(), module


# -- torch-free report and gate ------------------------------------------------------------------
NO_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from harness.cli import main
rc = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(rc)
"""


def _no_torch(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_gate_and_report_run_without_torch(tmp_path):
    smoke = ROOT / "results/smoke/results.json"
    r = _no_torch("gate", "--baseline", str(smoke), "--current", str(smoke))
    assert r.returncode == 0 and "no regression" in r.stdout, r.stderr
    committed = tmp_path / "cpu"
    # Not `steps/`: a checkout that ran `tox -e reproduce` holds ~18 GB of ignored step
    # folders there (models, checkpoints), which the report never reads.
    shutil.copytree(ROOT / "results/cpu", committed, ignore=shutil.ignore_patterns("steps"))
    r = _no_torch("report", str(committed), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out/LEADERBOARD.md").read_text().split("## Provenance")[0] == \
        (ROOT / "results/cpu/LEADERBOARD.md").read_text().split("## Provenance")[0]
    # the blocker works: a command that needs torch fails under it
    r = _no_torch("models")
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def test_report_refuses_a_run_file_without_the_facts_it_reads(tmp_path):
    import json

    old = tmp_path / "old"
    shutil.copytree(ROOT / "results/smoke", old)
    info = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({k: info[k] for k in
                                              ("profile", "config", "config_hash")}))
    r = _no_torch("report", str(old), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "older rad-harness" in r.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_code_version_ignores_presentation_and_sees_computation(tmp_path, monkeypatch):
    """Editing a table caption must not invalidate cached steps; editing the method must."""
    from harness.common import provenance

    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    base = provenance.code_version()
    for presentation in ("harness/report/tables.py", "harness/cli/results.py",
                         "harness/experiment/profiles/smoke.yaml"):
        with (tmp_path / presentation).open("a") as f:
            f.write("\n# a caption edit\n")
        assert provenance.code_version() == base, presentation
    for computation in ("rad/runtime/decode.py", "harness/tasks/rad_gsm8k.yaml",
                        "baselines/recipes.py"):
        with (tmp_path / computation).open("a") as f:
            f.write("\n# a change\n")
        assert provenance.code_version() != base, computation
        base = provenance.code_version()
