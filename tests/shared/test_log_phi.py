"""Values quoted from read data never reach a service's log or stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_SNIPPET = """
from shared.logging import setup_logging
setup_logging("t")
import logging
from pydicom.dataset import Dataset
ds = Dataset()
ds.StudyInstanceUID = "PIDLEAK4711"  # not a UID: pydicom warns, quoting the value
logging.getLogger("pydicom").error("an error is still logged")
"""


@pytest.mark.integration  # a fresh interpreter
def test_pydicom_warnings_quoting_values_are_not_logged() -> None:
    """pydicom's "Invalid value for VR UI: '<value>'" quoted a patient ID a C-FIND identifier carried where a UID
    belongs, in the JSON log and on stderr (found by a review); its errors are still logged."""
    r = subprocess.run([sys.executable, "-c", _SNIPPET], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "PIDLEAK4711" not in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert "an error is still logged" in r.stdout
