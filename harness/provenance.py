"""Where a result came from: code version, package versions, time. Saved beside artefacts."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import time
from pathlib import Path

_PACKAGES = ("rad-harness", "torch", "transformers", "lm-eval", "optuna")


def git_commit() -> str | None:
    """The checkout's commit (+ '-dirty' with uncommitted changes), None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty.strip() else "")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_provenance() -> dict:
    return {"git_commit": git_commit(), "packages": package_versions(),
            "python": platform.python_version(), "machine": platform.machine(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# Modules that only present results (tables, plots, the gate, argument parsing): editing them
# cannot change a measured number, so they are left out of the code version that keys steps.
_PRESENTATION = {"report.py", "gate.py", "cli.py", "eval_cli.py", "README.md"}


def code_version() -> str:
    """sha256 over the source of rad/, baselines/ and harness/ (task configs included), less
    the presentation modules: a step computed by other code is a different step."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in ("rad", "baselines", "harness"):
        for path in sorted((root / pkg).rglob("*")):
            if (path.suffix in (".py", ".yaml") and path.name not in _PRESENTATION
                    and "profiles" not in path.parts and "__pycache__" not in path.parts):
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]
