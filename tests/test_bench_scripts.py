"""Every benchmark under bench/ starts: its imports resolve and ``--help`` explains it (``make bench`` runs them all,
and a benchmark that no longer imports is only noticed there; bench/viewer.py and bench/workstation.py once imported
names that had moved)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = sorted(p for p in (REPO / "bench").glob("*.py") if p.name != "__init__.py")


@pytest.mark.integration  # a fresh interpreter per benchmark
@pytest.mark.parametrize("script", BENCHES, ids=lambda p: p.name)
def test_benchmark_starts_and_explains_itself(script: Path) -> None:
    r = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout and len(r.stdout) > 80, r.stdout
