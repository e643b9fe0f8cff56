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
from rad.runtime.distributed import SINGLE, World


class StepStore:
    """Content-addressed step folders under RUN/steps/<name>-<key>/."""

    def __init__(self, root: Path, code: str, provenance: dict, world: World = SINGLE):
        self.root = root / STEPS_DIR
        self.code = code
        self.provenance = provenance
        self.world = world

    def key(self, name: str, inputs: dict) -> str:
        return json_digest({"step": name, "code": self.code, "inputs": inputs})

    def run(self, name: str, inputs: dict, fn: Callable[[Path], None],
            resumable: bool = False, label: str = "",
            every_rank: bool = False) -> tuple[Path, dict]:
        """Run `fn(folder)` unless the step finished earlier. Under torchrun, rank 0 owns the
        folder and the marker; `fn` runs on every rank for a sharded step (`every_rank`:
        distillation, evaluation; `fn` itself writes on rank 0 only), else on rank 0 alone
        while the others wait; every rank gets rank 0's record."""
        world = self.world
        key = self.key(name, inputs)
        folder = self.root / f"{name}-{key}"
        marker = folder / STEP_FILE
        if world.broadcast(marker.exists()):
            if world.is_main:
                print(f"   {name} {label}: finished earlier ({folder.name}), skipped")
            return folder, {**json.loads(marker.read_text()), "cached": True}
        if world.is_main:
            if folder.exists() and not resumable:
                shutil.rmtree(folder)  # a killed non-resumable step starts over
            folder.mkdir(parents=True, exist_ok=True)
            print(f"   {name} {label} -> {folder}")
        world.barrier()
        t0 = time.time()
        if every_rank or world.is_main:
            fn(folder)
        record = {"step": name, "key": key, "inputs": inputs, "code_version": self.code,
                  "wall_s": round(time.time() - t0, 2), "provenance": self.provenance}
        if world.is_main:
            atomic_write_text(marker, json.dumps(record, indent=2))  # written last: finished
        return folder, {**world.broadcast(record), "cached": False}
