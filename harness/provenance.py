"""Where a result came from: code version, package versions, time. Saved beside artefacts."""

from __future__ import annotations

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
