"""`rad reproduce` starts the world first and loads the base model once: under torchrun every
rank would otherwise load it twice, the first time before its device is set (every copy on
cuda:0). The real command runs here with the cells planned away and the loads counted."""

from __future__ import annotations

import pytest
import torch

from harness.cli import experiment as cli_experiment
from harness.cli import main
from harness.experiment import runner
from harness.report.schema import RUN_FILE
from rad.runtime.distributed import SINGLE


@pytest.fixture
def counted(monkeypatch):
    """Every event in order: ("world", device), ("torch", setting), ("load", model),
    ("run", base model). The process-wide torch settings are recorded, not applied (they would
    outlive this test in the pytest process)."""
    events: list[tuple[str, object]] = []
    real_load, real_run = runner.load_model, runner.Runner.run

    def load_model(*args, **kwargs):
        lm = real_load(*args, **kwargs)
        events.append(("load", lm))
        return lm

    def init_world(device: str = "cpu"):
        events.append(("world", device))
        return SINGLE

    def run(self):
        events.append(("run", self.base))
        return real_run(self)

    monkeypatch.setattr(torch, "set_flush_denormal",
                        lambda on: events.append(("torch", f"flush_denormal={on}")))
    monkeypatch.setattr(torch, "set_num_threads",
                        lambda n: events.append(("torch", f"threads={n}")))
    monkeypatch.setattr(runner, "load_model", load_model)
    monkeypatch.setattr(runner.Runner, "run", run)
    monkeypatch.setattr(runner, "plan_cells", lambda cfg: [])  # no step runs, nothing loads
    monkeypatch.setattr(cli_experiment, "init_world", init_world)
    monkeypatch.setattr(cli_experiment, "write_report", lambda out: [])  # no cells to report
    return events


def test_the_world_starts_first_and_the_runner_uses_preflights_model(counted, tmp_path):
    out = tmp_path / "run"
    assert main(["reproduce", "--profile", "smoke", "--out", str(out),
                 "--allow-code-execution"]) == 0
    # the settings the run computes with come before the one load (loading may compute)
    assert counted[:3] == [("world", "cpu"), ("torch", "flush_denormal=True"),
                           ("torch", "threads=1")]
    assert [kind for kind, _ in counted[3:]] == ["load", "run"]
    (_, loaded), (_, used) = counted[3:]
    assert used is loaded  # the one model preflight loaded, not a second copy
    assert (out / RUN_FILE).exists()  # Runner.run itself went through (with no cells)
