"""Headless Debian Chromium driven by Playwright's sync API, for every browser test (viewer, workstation, OHIF).

Playwright's sync API keeps an asyncio event loop *running* on the thread that opened it for as long as it is open
(its dispatcher greenlet sits inside ``run_until_complete``). Opened on pytest's main thread, a session-wide browser
therefore breaks every later test that calls ``asyncio.run`` or uses pytest-asyncio ("cannot be called from a running
event loop"), and a second ``sync_playwright()`` refuses to start ("using Playwright Sync API inside the asyncio
loop"). So the one browser of the session lives on its own thread, and tests hold proxies (``Remote``) whose method
calls are carried out on that thread: the main thread never sees Playwright's loop, and the ordering of tests does not
matter.

Callbacks given to Playwright (``page.on``, ``page.route``) run on the browser thread with Playwright's own objects;
a proxied call made from that thread runs directly, so a callback may use the test's proxies too.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("RADLOOP_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
CALL_TIMEOUT_S = 600  # the longest one Playwright call may take (its own timeouts are far shorter)


class BrowserThread:
    """One thread that owns Playwright; ``call`` runs a function there and returns (or raises) its result."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Future[Any]] | None] = (
            queue.Queue())
        self._thread = threading.Thread(target=self._serve, name="playwright", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, kwargs, done = job
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                done.set_exception(exc)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        done: Future[Any] = Future()
        self._jobs.put((fn, args, kwargs, done))
        return done.result(timeout=CALL_TIMEOUT_S)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=60)


class Remote:
    """A Playwright object living on the browser thread; attribute reads and method calls happen there."""

    __slots__ = ("_obj", "_owner")

    def __init__(self, obj: Any, owner: BrowserThread) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name: str) -> Any:
        value = self._owner.call(getattr, self._obj, name)
        if callable(value) and not isinstance(value, type):
            return lambda *args, **kwargs: _wrap(self._owner.call(value, *_unwrap(args), **_unwrap(kwargs)),
                                                 self._owner)
        return _wrap(value, self._owner)

    def __setattr__(self, name: str, value: Any) -> None:  # tests note timings on a page
        self._owner.call(setattr, self._obj, name, _unwrap(value))

    def __repr__(self) -> str:
        return f"Remote({self._obj!r})"


def _wrap(value: Any, owner: BrowserThread) -> Any:
    if isinstance(value, list):
        return [_wrap(v, owner) for v in value]
    if type(value).__module__.startswith("playwright."):
        return Remote(value, owner)
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, Remote):
        return value._obj
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def launch_browser() -> Iterator[Any]:
    """The session's Chromium (the body of the ``browser`` fixture), as a ``Remote``."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian chromium is not installed at {CHROMIUM}; run `make setup` (APT_PACKAGES has chromium).")
    from playwright.sync_api import sync_playwright

    owner = BrowserThread()
    started: dict[str, Any] = {}

    def start() -> Any:
        started["pw"] = sync_playwright().start()
        return started["pw"].chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

    def close(browser: Any) -> None:
        try:
            browser.close()
        finally:
            started["pw"].stop()

    try:
        browser = owner.call(start)
        try:
            yield Remote(browser, owner)
        finally:
            owner.call(close, browser)
    finally:
        owner.stop()
