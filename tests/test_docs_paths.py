"""Every project path and dotted module named in the prose exists.

Prose is what a reader follows but no import checks: comments and docstrings of the .py files,
comment lines of the shell scripts (`.ci/run`, `tests/gpu/*.sh`), the YAML files, the markdown
files and tox.ini / pyproject.toml. A path is a name starting with
one of the project's top-level folders (`rad/`, `baselines/`, `harness/`, `tests/`, `results/`);
a dotted name starts with one of its packages (`rad.`, `baselines.`, `harness.`) and may end in
an attribute of the module (`rad.runtime.decode.generate`). Checked statically (ast), so the
test imports nothing of the project.
"""

import ast
import fnmatch
import io
import re
import sys
import tokenize
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATH_ROOTS = ("rad", "baselines", "harness", "tests", "results")
PACKAGES = ("rad", "baselines", "harness")
# Words the prose uses as placeholders inside a path (`harness/experiment/profiles/NAME.yaml`).
PLACEHOLDERS = ("NAME", "DIR", "STEM", "TASK")

_NOT_AFTER = r"(?<![\w./$~-])"  # not the tail of a longer path or name (`runs/rad-s0`)
_PATH = re.compile(_NOT_AFTER + "((?:" + "|".join(PATH_ROOTS) + r")/[\w./{},*<>-]*)")
_DOTTED = re.compile(_NOT_AFTER + "((?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_]\w*)+)")


@cache
def _ignore_patterns() -> tuple[str, ...]:
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    return tuple(x.strip().rstrip("/") for x in lines if x.strip() and not x.startswith("#"))


def _ignored(rel: str) -> bool:
    """Whether git ignores `rel` (a run's outputs, such as `results/cpu/steps`): it names a
    build output, not a file of the repository. The .gitignore's simple patterns only."""
    parts = rel.strip("/").split("/")
    for pattern in _ignore_patterns():
        if "/" in pattern.strip("/"):
            if fnmatch.fnmatch("/".join(parts[:pattern.count("/") + 1]), pattern):
                return True
        elif any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def _walk(root: Path):
    for path in sorted(root.iterdir()):
        if path.is_dir():
            if path.name.startswith(".") or _ignored(path.relative_to(ROOT).as_posix()):
                continue  # caches, build outputs and a run's step store
            yield from _walk(path)
        else:
            yield path


def prose_files() -> list[Path]:
    files = [ROOT / name for name in ("README.md", "tox.ini", "pyproject.toml", ".ci/run")]
    for top in PATH_ROOTS:
        if (ROOT / top).is_dir():
            files += [p for p in _walk(ROOT / top)
                      if p.suffix in (".py", ".sh", ".md", ".yaml", ".yml")]
    return [p for p in files if p.exists()]


def python_prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring."""
    out = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(
        io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                first = body[0].lineno
                for i, line in enumerate(body[0].value.value.splitlines()):
                    out.append((first + i, line))
    return out


def prose(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return python_prose(text)
    lines = list(enumerate(text.splitlines(), start=1))
    if path.suffix == ".sh" or path.name == "run":  # shell: its comment lines only
        return [(i, x) for i, x in lines if x.lstrip().startswith("#") and not x.startswith("#!")]
    return lines


def _expand_braces(name: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", name)
    if not m:
        return [name]
    return [x for alt in m.group(1).split(",")
            for x in _expand_braces(name[:m.start()] + alt + name[m.end():])]


@cache
def _profiles() -> frozenset[str]:
    return frozenset(p.stem for p in (ROOT / "harness/experiment/profiles").glob("*.yaml"))


def path_exists(name: str) -> bool:
    name = name.rstrip(".,:;")
    for candidate in _expand_braces(name):
        pattern = re.sub(r"<[^<>]*>", "*", candidate)
        for word in PLACEHOLDERS:
            pattern = re.sub(rf"\b{word}\b", "*", pattern)
        if "*" in pattern:
            if not any(ROOT.glob(pattern.rstrip("/"))) and not _ignored(pattern):
                return False
            continue
        if (ROOT / pattern).exists() or _ignored(pattern):
            continue
        # `results/<profile>/` is where `rad reproduce --profile <profile>` writes; the paper
        # profile's folder exists only where it has run.
        parts = pattern.strip("/").split("/")
        if parts[0] == "results" and len(parts) == 2 and parts[1] in _profiles():
            continue
        return False
    return True


def _module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _names(path: Path) -> tuple[frozenset[str], dict[str, frozenset[str] | None]]:
    """A module's top-level names, and each top-level class's attribute names (None where the
    class has bases, whose attributes it may inherit)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names, classes = set(), {}

    def targets(node):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                yield from targets(elt)

    def defined(stmts, into):
        for st in stmts:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                into.add(st.name)
            elif isinstance(st, ast.Assign):
                for t in st.targets:
                    into.update(targets(t))
            elif isinstance(st, (ast.AnnAssign, ast.AugAssign)):
                into.update(targets(st.target))
            elif isinstance(st, (ast.Import, ast.ImportFrom)):
                into.update((a.asname or a.name).split(".")[0] for a in st.names)
            elif isinstance(st, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody"):
                    defined(getattr(st, block, []), into)
                for handler in getattr(st, "handlers", []):
                    defined(handler.body, into)

    defined(tree.body, names)
    for st in tree.body:
        if isinstance(st, ast.ClassDef):
            own = set()
            defined(st.body, own)
            classes[st.name] = None if st.bases else frozenset(own)
    return frozenset(names), classes


def dotted_exists(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest prefix that is a module
        path = _module_file(".".join(parts[:cut]))
        if path is not None:
            break
    else:
        return False
    rest = parts[cut:]
    if not rest:
        return True
    names, classes = _names(path)
    if "__getattr__" in names:
        return True  # a lazy module: any attribute may exist
    if rest[0] not in names:
        return False
    if len(rest) > 1 and classes.get(rest[0]) is not None:
        return rest[1] in classes[rest[0]]
    return True


def missing_in(text: str) -> list[str]:
    """The project paths and dotted names in `text` that do not exist."""
    return ([m.group(1).rstrip(".,:;") for m in _PATH.finditer(text) if not path_exists(m.group(1))]
            + [m.group(1) for m in _DOTTED.finditer(text) if not dotted_exists(m.group(1))])


def missing_names(path: Path) -> list[str]:
    """`file:line: name` for each missing name in `path`'s prose."""
    rel = path.relative_to(ROOT)
    return [f"{rel}:{line}: {name}" for line, text in prose(path) for name in missing_in(text)]


_LINK = re.compile(r"\]\(([^()\s#]+)(?:#[^()\s]*)?\)")


def test_markdown_links_resolve():
    """A relative link in a markdown file points at a file or folder of the repository."""
    bad = []
    for path in prose_files():
        if path.suffix == ".md":
            for line, text in prose(path):
                for m in _LINK.finditer(text):
                    target = m.group(1)
                    if "://" not in target and not (path.parent / target).exists():
                        bad.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not bad, "markdown links to nothing:\n" + "\n".join(bad)


def test_prose_names_only_what_exists():
    files = prose_files()
    assert len(files) > 50, "the walk found too few files: is ROOT right?"
    bad = [entry for path in files for entry in missing_names(path)]
    assert not bad, "names in comments, docstrings, YAML or markdown that do not exist:\n" + \
        "\n".join(bad)


@pytest.mark.parametrize("text, expected", [
    ("see `harness/tasks/base.py`", []),
    ("see `harness/tasks/nonexistent_module.py`", ["harness/tasks/nonexistent_module.py"]),
    ("the `rad/runtime/` folder.", []),
    ("`harness/tasks/{piqa,winogrande}.py`", []),
    ("`harness/tasks/{piqa,nonexistent}.py`", ["harness/tasks/{piqa,nonexistent}.py"]),
    ("`harness/tasks/<name>.py` and `harness/experiment/profiles/NAME.yaml`", []),
    ("written to `results/paper/`", []),
    ("written to `results/nonexistent-profile/`", ["results/nonexistent-profile/"]),
    ("runs/rad-s0 and tokens/s", []),
    ("a run's `results/<profile>/steps/` and `results/cpu/steps/`", []),
    ("`rad.runtime.decode.generate`", []),
    ("`harness.tasks.base`", []),
    ("`rad.speculative.speculative_generate`", ["rad.speculative.speculative_generate"]),
    ("`harness.cache`", ["harness.cache"]),
    ("`rad.runtime.decode.no_such_function`", ["rad.runtime.decode.no_such_function"]),
    ("`rad.registry.Registry.get` and `-m harness.cli`", []),
])
def test_the_checker_flags_exactly_the_missing_names(text, expected):
    assert missing_in(text) == expected


def test_python_prose_is_comments_and_docstrings_only():
    source = '"""Module doc: harness/a.py."""\nx = "harness/b.py"  # harness/c.py\n' \
             'def f():\n    """harness/d.py"""\n    return "harness/e.py"\n'
    texts = " ".join(text for _, text in python_prose(source))
    assert "harness/a.py" in texts and "harness/c.py" in texts and "harness/d.py" in texts
    assert "harness/b.py" not in texts and "harness/e.py" not in texts


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    """The checker pointed at an empty folder (its caches cleared before and after)."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    _ignore_patterns.cache_clear()
    _profiles.cache_clear()
    yield tmp_path
    _ignore_patterns.cache_clear()
    _profiles.cache_clear()


def test_a_planted_stale_name_fails(tmp_root):
    """The walk reaches every kind of prose file: a stale name planted in each is reported."""
    for rel, text in [("README.md", "see `harness/old_module.py`\n"),
                      ("harness/x.yaml", "# rendered by harness/eval_tasks.py\n"),
                      ("rad/m.py", "# see rad.speculative\nx = 'rad/not_prose.py'\n"),
                      ("tests/gpu/run.sh", "# writes results/nowhere/x.json\necho tests/no.sh\n"),
                      ("results/README.md", "`results/cpu/GONE.md`\n")]:
        (tmp_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_root / rel).write_text(text)
    (tmp_root / ".gitignore").write_text("results/*/steps/\n")
    bad = sorted(e for p in prose_files() for e in missing_names(p))
    assert bad == ["README.md:1: harness/old_module.py", "harness/x.yaml:1: harness/eval_tasks.py",
                   "rad/m.py:1: rad.speculative", "results/README.md:1: results/cpu/GONE.md",
                   "tests/gpu/run.sh:1: results/nowhere/x.json"]
