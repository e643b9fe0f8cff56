"""The results schema: `rad gate` refuses a results.json of another schema and `rad report` a
run folder whose cells lack the per-item records every claim is paired on; each in one line,
exit 2. Runs on the committed smoke folder (no reproduction)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.cli import main
from harness.report.schema import CELLS_DIR, SCHEMA

SMOKE = Path(__file__).resolve().parents[1] / "results" / "smoke"


def _rad(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_the_committed_results_carry_the_current_schema():
    for path in SMOKE.parent.glob("*/results.json"):
        assert json.loads(path.read_text())["schema"] == SCHEMA, path


def test_gate_refuses_an_older_schema_in_one_line(tmp_path, capsys):
    old = json.loads((SMOKE / "results.json").read_text())
    old["schema"] = "rad-harness/results/v1"
    (tmp_path / "old.json").write_text(json.dumps(old))
    rc, err = _rad(capsys, "gate", "--baseline", str(tmp_path / "old.json"), "--current",
                   str(SMOKE / "results.json"))
    assert rc == 2 and err.count("\n") == 1 and "'rad-harness/results/v1'" in err, err


def test_report_refuses_cells_without_per_item_records_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(SMOKE, run)
    cell = run / CELLS_DIR / "rad-s1.json"
    data = json.loads(cell.read_text())
    del data["items"]
    cell.write_text(json.dumps(data))
    rc, err = _rad(capsys, "report", str(run), "--out", str(tmp_path / "out"))
    assert rc == 2 and err.count("\n") == 1 and "rad-s1.json has no per-item records" in err
    assert not (tmp_path / "out" / "results.json").exists()
