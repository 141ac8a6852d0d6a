"""`radloop demo --keep-running` waits for Ctrl-C *or* SIGTERM, so `kill <pid>` still stops the platform by its PIDs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import os, signal, sys, threading
from radloop.demo.run import _block_until_interrupt

before = signal.getsignal(signal.SIGTERM)
threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
_block_until_interrupt()
assert signal.getsignal(signal.SIGTERM) is before, "the previous SIGTERM handler was not restored"
print("returned after SIGTERM", flush=True)
"""


def test_sigterm_ends_the_keep_running_wait_so_the_platform_is_stopped() -> None:
    proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=120)
    # Without the handler, SIGTERM kills the process (returncode -15) before the platform's `finally` can stop it.
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "returned after SIGTERM" in proc.stdout
