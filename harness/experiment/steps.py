"""Content-addressed experiment steps: each step's folder is named by a hash of its inputs (the
step's config, the code version and the keys of the steps it reads); `step.json`, written last,
marks it finished, so a re-run skips it and a killed run resumes where it stopped."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from harness.common.files import atomic_write_text
from harness.report.schema import STEP_FILE, STEPS_DIR
from rad.digest import json_digest


class StepStore:
    """Content-addressed step folders under RUN/steps/<name>-<key>/."""

    def __init__(self, root: Path, code: str, provenance: dict):
        self.root = root / STEPS_DIR
        self.code = code
        self.provenance = provenance

    def key(self, name: str, inputs: dict) -> str:
        return json_digest({"step": name, "code": self.code, "inputs": inputs})

    def run(self, name: str, inputs: dict, fn: Callable[[Path], None],
            resumable: bool = False, label: str = "") -> tuple[Path, dict]:
        key = self.key(name, inputs)
        folder = self.root / f"{name}-{key}"
        marker = folder / STEP_FILE
        if marker.exists():
            print(f"   {name} {label}: finished earlier ({folder.name}), skipped")
            return folder, {**json.loads(marker.read_text()), "cached": True}
        if folder.exists() and not resumable:
            shutil.rmtree(folder)  # a killed non-resumable step starts over
        folder.mkdir(parents=True, exist_ok=True)
        print(f"   {name} {label} -> {folder}")
        t0 = time.time()
        fn(folder)
        record = {"step": name, "key": key, "inputs": inputs, "code_version": self.code,
                  "wall_s": round(time.time() - t0, 2), "provenance": self.provenance}
        atomic_write_text(marker, json.dumps(record, indent=2))  # written last: finished
        return folder, {**record, "cached": False}
