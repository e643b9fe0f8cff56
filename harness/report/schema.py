"""The on-disk layout of a run folder and of results.json: names the runner writes and the report
and gate read. Torch-free, like everything under harness/report/."""

from __future__ import annotations

# results.json layout; the gate refuses any other. v2: every cell holds its per-item records
# (the verdict is paired throughout).
SCHEMA = "rad-harness/results/v2"
RUN_FILE = "run.json"  # the run's manifest: config, planned cells, task and method facts
CELLS_DIR = "cells"  # one <method>-s<seed>.json per finished cell
STEPS_DIR = "steps"  # content-addressed step folders (not committed)
STEP_FILE = "step.json"  # written last into a step folder: the step is finished


def cell_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def method_of(name: str) -> str:
    """The method of a `<method>-s<seed>` name."""
    return name.rsplit("-s", 1)[0]
