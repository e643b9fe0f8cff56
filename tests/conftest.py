"""Fixtures shared by several test modules (plain helpers are in tiny_models.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness.cli import main
from harness.models import load_model


@pytest.fixture(scope="session")
def tiny():
    """tiny-random loaded from the environment's RAD_CACHE_DIR (built there on first use)."""
    return load_model("tiny-random")


@pytest.fixture(scope="module")
def fast_tiny_models():
    """tiny-random's activations go denormal on real text; flushing them keeps a module fast
    (rad eval does the same). One thread: these models are too small to gain from more, and on a
    busy 2-core machine extra threads make each op 10-50x slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("fast_tiny_models")`."""
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


@pytest.fixture
def cli(capsys):
    """Run `rad ARGV...` in-process: its exit code, stdout and stderr."""
    def run(*argv: str) -> SimpleNamespace:
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse's own errors (our _Parser: one line, exit 2)
            rc = e.code
        out, err = capsys.readouterr()
        return SimpleNamespace(rc=rc, out=out, err=err)
    return run


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    """A test that needs a whole smoke reproduction (test_harness's `smoke_run`) is slow."""
    for item in items:
        if "smoke_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
