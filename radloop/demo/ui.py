"""What every stage of the demo shows and how it waits: progress bars and bounded polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def progress_bar(console: Console) -> Progress:
    """A progress bar with a spinner, the count done and the time elapsed (kept on screen when done)."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def wait_until(what: str, predicate: Callable[[], Any], timeout_s: float, interval_s: float = 1.0) -> Any:
    """Poll ``predicate`` every ``interval_s`` until it returns something truthy, which is returned; raise
    :class:`TimeoutError` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
