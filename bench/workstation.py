"""Workstation benchmark: the radiologist's worklist and reading view (/viewer/worklist/) in headless Debian Chromium,
through the local entry point of a real platform (entry proxy, ingestion, streaming gateway, verification processes on
an embedded moto server), on the "4G" phone profile the viewer benchmark uses (CDP 30 Mbit/s down, 10 ms latency,
HTTP cache disabled) and unthrottled on a desktop viewport.

Per run (a fresh browser context, signed in as a radiologist):

- worklist first paint: from navigation start (cold: the page, its script and the worklist API call all go over the
  throttled link) to the frame after the worklist rows are in the page;
- submit and next: from the "Submit and next" key press to the next case's first image drawn
  (IMAGE_RENDERED), with the next case prefetched (its case view, series metadata and first frame, decoded), and
  the same without prefetch (``?prefetch=0``) for comparison. Three reads per run and mode.

Targets (issue 17): worklist first paint < 1 s and submit-and-next < 300 ms with prefetch, on 4G. Results:
``bench/results/workstation.json``; ``--screenshots DIR`` saves desktop and phone screenshots
(workstation-*.png, for docs/workstation.md); ``--strict`` exits 1 on a missed target.

Usage: ``python bench/workstation.py [--runs 2] [--screenshots docs/img] [--strict]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radloop.local.embedded_aws import start_embedded_aws  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.viewer.browser_support import FOUR_G, throttle  # noqa: E402
from tests.workstation.conftest import DESKTOP, PHONE, Platform, start_platform, wait_reading  # noqa: E402

READS_PER_RUN = 3


def signed_in_context(browser: Any, p: Platform, viewport: dict[str, Any], subject: str) -> Any:
    """A fresh context whose tab already holds a radiologist's token in sessionStorage (as after signing in)."""
    ctx = browser.new_context(**viewport)
    token = mint_token(p.settings, "radiologist", subject=subject)
    ctx.add_init_script(f"sessionStorage.setItem('radloop.token', {json.dumps(token)});")
    return ctx


def one_run(browser: Any, p: Platform, *, viewport: dict[str, Any], four_g: bool, prefetch: bool, subject: str,
            screenshots: Path | None = None, shot_name: str = "") -> dict[str, Any]:
    ctx = signed_in_context(browser, p, viewport, subject)
    try:
        page = ctx.new_page()
        if four_g:
            throttle(page, FOUR_G)
        query = "" if prefetch else "?prefetch=0"
        page.goto(f"{p.worklist_url}{query}")
        page.wait_for_function("typeof window.radloopWorkstation?.firstListPaintAt === 'number'", timeout=60_000)
        paint = page.evaluate("window.radloopWorkstation.firstListPaintAt")
        fcp = page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
        if screenshots:
            page.wait_for_function("document.querySelector('td.study-date')?.textContent", timeout=30_000)
            page.screenshot(path=str(screenshots / f"workstation-worklist-{shot_name}.png"))
        first = page.eval_on_selector("#worklist-table tbody tr", "r => r.dataset.case")
        page.click(f"button[data-open='{first}']")
        wait_reading(page, first, timeout_ms=60_000)
        if screenshots:
            page.check("#overlay-toggle")
            page.wait_for_timeout(300)
            page.screenshot(path=str(screenshots / f"workstation-reading-{shot_name}.png"))
            page.uncheck("#overlay-toggle")
        times = []
        for k in range(READS_PER_RUN):
            if prefetch:  # a radiologist looks at a case for longer than its successor takes to prefetch
                page.wait_for_function("window.radloopWorkstation.prefetchedId !== null", timeout=60_000)
            current = page.evaluate("window.radloopWorkstation.caseId")
            page.keyboard.press("n")
            page.keyboard.press("Control+Enter")
            page.wait_for_function("(n) => window.radloopWorkstation.timings.length === n", arg=k + 1,
                                   timeout=60_000)
            t = page.evaluate(f"window.radloopWorkstation.timings[{k}]")
            assert t["caseId"] != current
            times.append(t)
        page.wait_for_function(f"window.radloopWorkstation.submitted.length === {READS_PER_RUN}", timeout=60_000)
        page.click("#release-case")
        return {"worklist_first_paint_ms": round(paint, 1), "first_contentful_paint_ms": fcp and round(fcp, 1),
                "submit_to_next_image_ms": [round(t["submitToFirstImageMs"], 1) for t in times],
                "prefetched": [t["prefetched"] for t in times]}
    finally:
        ctx.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="runs per profile and mode (default 2)")
    ap.add_argument("--screenshots", type=Path, default=None, help="folder for workstation-*.png")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="radloop-bench-ws-"))
    aws = start_embedded_aws(log_path=tmp / "moto.log")
    out: dict[str, Any] = {"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
                           "profile_4g": FOUR_G, "reads_per_run": READS_PER_RUN}
    try:
        with contextlib.closing(start_platform(aws.endpoint, tmp / "var")) as gen:
            p = next(gen)
            modes = [("4g_phone", PHONE, True), ("desktop", DESKTOP, False)]
            # enough unread cases for every run: READS_PER_RUN + 1 (the one left open) per run
            need = (args.runs * 2 * len(modes) + 1) * (READS_PER_RUN + 1) + 4
            t0 = time.monotonic()
            for start in range(0, need, 12):
                p.add_cases([round(0.05 + 0.9 * ((start + i) * 37 % 100) / 100, 3) for i in range(min(12, need - start))])
            out["seed_s"] = round(time.monotonic() - t0, 1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                try:
                    # warm the platform (gateway caches, route set-up) once, as a day's first case would
                    one_run(browser, p, viewport=DESKTOP, four_g=False, prefetch=True, subject="bench-warm")
                    n = 0
                    for name, viewport, four_g in modes:
                        for prefetch in (True, False):
                            key = f"{name}_{'prefetch' if prefetch else 'no_prefetch'}"
                            runs = []
                            for r in range(args.runs):
                                n += 1
                                shots = args.screenshots if (args.screenshots and prefetch and r == 0) else None
                                if shots:
                                    shots.mkdir(parents=True, exist_ok=True)
                                runs.append(one_run(browser, p, viewport=viewport, four_g=four_g, prefetch=prefetch,
                                                    subject=f"bench-{n}", screenshots=shots,
                                                    shot_name="phone" if four_g else "desktop"))
                            paints = [r["worklist_first_paint_ms"] for r in runs]
                            nexts = [t for r in runs for t in r["submit_to_next_image_ms"]]
                            out[key] = {"runs": runs, "worklist_first_paint_ms_median": statistics.median(paints),
                                        "submit_to_next_image_ms_median": statistics.median(nexts),
                                        "submit_to_next_image_ms_max": max(nexts)}
                finally:
                    browser.close()
    finally:
        aws.stop()
    g = out["4g_phone_prefetch"]
    out["targets"] = {
        "worklist_first_paint_4g_lt_1000ms": {"value_ms": g["worklist_first_paint_ms_median"],
                                              "met": g["worklist_first_paint_ms_median"] < 1000},
        "submit_to_next_image_4g_prefetch_lt_300ms": {"value_ms": g["submit_to_next_image_ms_median"],
                                                      "max_ms": g["submit_to_next_image_ms_max"],
                                                      "met": g["submit_to_next_image_ms_median"] < 300},
    }
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "workstation.json").write_text(json.dumps(out, indent=2))
    summary = {k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in out.items()
               if isinstance(v, dict) and "runs" in v}
    print(json.dumps({"summary": summary, "targets": out["targets"]}, indent=2))
    return 1 if args.strict and not all(t["met"] for t in out["targets"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
