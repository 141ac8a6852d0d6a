"""Values quoted from read data never reach a service's log or stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_SNIPPET = """
import sys
if sys.argv[1] == "service":
    from shared.logging import setup_logging
    setup_logging("t")
else:  # the operator's CLI
    from shared.log_filters import setup_cli_logging
    setup_cli_logging()
import logging
from pydicom.dataset import Dataset
ds = Dataset()
ds.StudyInstanceUID = "PIDLEAK4711"  # not a UID: pydicom warns, quoting the value
logging.getLogger("pynetdicom.utils").warning("Non-conformant 'Affected SOP Instance UID' value 'MRN7654321.DOE'")
logging.getLogger("pydicom").error("an error is still logged")
"""


@pytest.mark.integration  # a fresh interpreter
@pytest.mark.parametrize("who", ["service", "cli"])
def test_library_warnings_quoting_values_are_not_logged(who: str) -> None:
    """pydicom's "Invalid value for VR UI: '<value>'" and pynetdicom's "Non-conformant ... value '<value>'" quoted a
    patient ID a sender put where a UID belongs, in a service's JSON log, on its stderr and on the CLI's (found by
    reviews); their errors are still logged."""
    r = subprocess.run([sys.executable, "-c", _SNIPPET, who], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "PIDLEAK4711" not in r.stdout + r.stderr and "MRN7654321" not in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert "an error is still logged" in r.stdout + r.stderr
