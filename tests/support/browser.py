"""Headless Debian Chromium driven by Playwright's sync API, for every browser test (viewer, workstation, OHIF).

One session-wide browser (the ``browser`` fixture in tests/conftest.py): Playwright's sync API keeps its event loop
running on the main thread while it is open, so a second ``sync_playwright()`` in the same session fails with "using
Playwright Sync API inside the asyncio loop". Tests open pages or contexts on the shared browser instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("RADLOOP_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def launch_browser() -> Iterator[object]:
    """The session's Chromium (the body of the ``browser`` fixture)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian chromium is not installed at {CHROMIUM}; run `make setup` (APT_PACKAGES has chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
