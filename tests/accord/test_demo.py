"""`make demo` runs `accord demo`: it must finish and agree with the ground truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "accord", "demo", "--customers", "400", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "every figure matches the generator's ground truth" in run.stdout
    assert (tmp_path / "solent-boats.db").exists()
    assert (tmp_path / "bluewater-travel.db").exists()
