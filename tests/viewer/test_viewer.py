"""The viewer in real headless Chromium (Debian's), against the real gateway process serving a 300-slice CT series
stored as ingestion stores it. Timings are recorded (printed and written under var/), never asserted here: the
benchmark (bench/viewer.py) judges them against the targets."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest

from shared.auth import mint_token
from tests.viewer.browser_support import (
    DESKTOP,
    PHONE,
    displayed_image,
    gateway_rendered,
    mean_abs_diff,
    throttle,
    viewer_url,
    wait_state,
)
from tests.viewer.conftest import N_SLICES, REPO, CtSeries
from tests.viewer.series_store import start_gateway

PRESETS = {"lung": (-600, 1500), "mediastinum": (40, 400), "bone": (400, 1800)}
SCREENSHOTS = Path(os.environ.get("RADLOOP_VIEWER_SCREENSHOTS", REPO / "var" / "viewer-screenshots"))
RECORD = REPO / "var" / "viewer-test-timings.json"


def record(key: str, value: Any) -> None:
    """Keep a measured figure (the tests record timings; they do not assert them)."""
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    data[key] = value
    RECORD.write_text(json.dumps(data, indent=2))
    print(f"{key}: {value}")


@pytest.fixture(scope="module")
def desktop(browser: Any, gateway: Any, ct_series: CtSeries, viewer_token: str) -> Iterator[Any]:
    """One desktop page with the whole series loaded (the tests below share it to stay fast)."""
    context = browser.new_context(**DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    frames: list[tuple[str, str, int]] = []  # (url, content type, body bytes) of every frame response, in order
    ranges: list[tuple[str, int, str]] = []  # (url, status, Content-Range) of the responses to Range requests
    requested: list[str] = []  # frame URLs in the order they were requested
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requested.append(r.url) if "/frames/" in r.url else None)
    page.on("response", lambda r: frames.append((r.url, r.headers.get("content-type", ""),
                                                 int(r.headers.get("content-length", "0"))))
            if "/frames/" in r.url or "/pixeldata" in r.url else None)
    page.on("response", lambda r: ranges.append((r.url, r.status, r.headers.get("content-range", "")))
            if "/frames/" in r.url and r.request.headers.get("range") else None)
    t0 = time.monotonic()
    page.goto(viewer_url(gateway.base_url, ct_series.study, ct_series.series, viewer_token))
    wait_state(page)
    page.wait_for_function("window.radloopViewer.stats().firstRenderAt !== null", timeout=30_000)
    page.first_image_s = time.monotonic() - t0  # type: ignore[attr-defined]
    assert page.evaluate("window.radloopViewer.waitAllLoaded(90000)"), "not every slice loaded at full resolution"
    page.errors = errors  # type: ignore[attr-defined]
    page.frames_seen = frames  # type: ignore[attr-defined]
    page.ranges_seen = ranges  # type: ignore[attr-defined]
    page.frames_requested = requested  # type: ignore[attr-defined]
    yield page
    context.close()


def test_first_image_is_not_blank_and_counter_shows_position(desktop: Any) -> None:
    info = desktop.evaluate("window.radloopViewer.info")
    assert info["count"] == N_SLICES and info["modality"] == "CT"
    img = displayed_image(desktop, 256)
    # A chest slice: a dark background, a bright body, lungs; a blank or uniform canvas fails these.
    assert img.std() > 30, f"the canvas looks blank (grey-level std {img.std():.1f})"
    assert 0.1 < float(np.mean(img > 40)) < 0.9
    k = desktop.evaluate("window.radloopViewer.currentIndex")
    assert desktop.inner_text("#counter") == f"{k + 1} / {N_SLICES}"
    assert not desktop.errors, desktop.errors
    stats = desktop.evaluate("window.radloopViewer.stats()")
    record("desktop_unthrottled", {"page_to_first_image_s": round(desktop.first_image_s, 3),
                                   "first_image_ms": stats["firstRenderAt"], "all_full_ms": stats["fullSeriesFromOpen"],
                                   "requests": stats["requests"]})


def test_frames_stream_as_htj2k_low_resolution_first(desktop: Any, ct_series: CtSeries) -> None:
    """Progressive, interleaved streaming: the shown slice's low-resolution prefix first, then the whole series at
    its lowest resolution in one Series Pixel Data request, and every slice at full resolution, most of them as the
    rest of the codestream after that prefix (a Range request); all as stored HTJ2K codestreams."""
    seen = desktop.frames_seen
    assert seen, "no frame responses were seen"
    assert all('type="image/jphc"' in ctype or ctype.startswith("image/jphc") for _, ctype, _ in seen), \
        {c for _, c, _ in seen}
    batch = [(u, n) for u, _, n in seen if "/pixeldata" in u]
    low = [(u, n) for u, _, n in seen if "resolution=" in u and "/frames/" in u]
    full = [(u, n) for u, _, n in seen if "resolution=" not in u]
    middle = ct_series.sops[(N_SLICES - 1) // 2]
    first = desktop.frames_requested[0]
    assert "resolution=" in first and f"/instances/{middle}/" in first, first
    sop_of = lambda url: url.split("/instances/")[1].split("/")[0]  # noqa: E731
    assert {sop_of(u) for u, _ in full} == set(ct_series.sops)
    # One batched request brought every slice's level-0 prefix: a few percent of the series' bytes, and no slice
    # needed a low-resolution request of its own (the prefetch window goes straight to full resolution).
    assert [u.split("/series/")[1] for u, _ in batch] == [
        f"{ct_series.series}/pixeldata?resolution=0&offset=0&limit=1000"], batch
    stats = desktop.evaluate("window.radloopViewer.stats()")
    assert stats["batch"]["frames"] == N_SLICES and stats["batch"]["bytes"] == batch[0][1], stats["batch"]
    assert stats["batch"]["requests"] == 1
    assert batch[0][1] < 0.05 * sum(n for _, n in full)
    assert stats["allLowFromOpen"] is not None and len(low) <= 2, low
    # The slices the batch brought were completed by Range requests for the bytes after their prefix: 206, from
    # past the prefix's length, so no byte of the series came twice.
    ranges = desktop.ranges_seen
    assert stats["remainders"] == len(ranges) > N_SLICES * 0.8, (stats["remainders"], len(ranges))
    assert all(status == 206 and cr.startswith("bytes ") and not cr.startswith("bytes 0-") for _, status, cr in ranges)
    assert sum(n for _, n in batch) + sum(n for _, n in full) < 1.02 * sum(
        int(cr.rsplit("/", 1)[1]) for _, _, cr in ranges) * N_SLICES / len(ranges)
    # A per-slice prefix is a small part of the frame (the 128-px level of a 512-px image).
    assert np.median([n for _, n in low]) < 0.2 * np.median([n for _, n in full])


def _open_with_limit(browser: Any, gateway_settings: Any, ct_series: CtSeries, viewer_dist: Path, viewer_token: str,
                     log: Path, max_frames: int) -> tuple[Any, Any, list[tuple[str, int]], list[str]]:
    """The viewer on a gateway whose frame limit is ``max_frames``, every slice loaded: (the page's stats, the
    gateway, each pixeldata request's URL and status, each low-resolution frame request's URL)."""
    gw = start_gateway(gateway_settings, log, viewer_dist=viewer_dist,
                       env_extra={"RADLOOP_WADO_MAX_FRAMES": str(max_frames)})
    context = browser.new_context(**DESKTOP)
    try:
        page = context.new_page()
        answers: list[tuple[str, int]] = []
        page.on("response", lambda r: answers.append((r.url, r.status)) if "/pixeldata" in r.url else None)
        low: list[str] = []
        page.on("request", lambda r: low.append(r.url) if "/frames/" in r.url and "resolution=" in r.url else None)
        page.goto(viewer_url(gw.base_url, ct_series.study, ct_series.series, viewer_token))
        wait_state(page)
        assert page.evaluate("window.radloopViewer.waitAllLoaded(90000)"), "not every slice loaded"
        return page.evaluate("window.radloopViewer.stats()"), gw, answers, low
    finally:
        context.close()


def test_series_over_the_frame_limit_comes_in_batched_pieces(
        browser: Any, gateway_settings: Any, ct_series: CtSeries, viewer_dist: Path, viewer_token: str,
        tmp_path: Path) -> None:
    """A gateway whose frame limit (100) is below the 300 slices refuses the whole series (413) and says its limit:
    the viewer asks for the series in pieces of 100 frames and every slice comes from them, with no low-resolution
    request per slice (it fell back to 300 of them before)."""
    stats, gw, answers, low = _open_with_limit(browser, gateway_settings, ct_series, viewer_dist, viewer_token,
                                               tmp_path / "gateway.log", 100)
    try:
        assert [(u.split("/pixeldata")[1], st) for u, st in answers] == [
            ("?resolution=0&offset=0&limit=1000", 413), ("?resolution=0&offset=0&limit=100", 200),
            ("?resolution=0&offset=100&limit=100", 200), ("?resolution=0&offset=200&limit=100", 200)], answers
        assert "error" not in stats["batch"], stats["batch"]
        assert stats["batch"]["frames"] == N_SLICES and stats["batch"]["requests"] == 4, stats["batch"]
        assert stats["allLowFromOpen"] is not None and len(low) <= 2, low
        assert stats["remainders"] > N_SLICES * 0.8  # the full frames are the rest after each piece's prefixes
    finally:
        gw.stop()


def test_series_the_gateway_will_not_batch_falls_back_to_one_request_per_slice(
        browser: Any, gateway_settings: Any, ct_series: CtSeries, viewer_dist: Path, viewer_token: str,
        tmp_path: Path) -> None:
    """A gateway that allows fewer frames per request (4) than a batch is worth (8) still serves the viewer: it falls
    back to one low-resolution request per slice, and every slice loads."""
    stats, gw, answers, low = _open_with_limit(browser, gateway_settings, ct_series, viewer_dist, viewer_token,
                                               tmp_path / "gateway.log", 4)
    try:
        assert [st for _, st in answers] == [413], answers
        assert "413" in stats["batch"]["error"] and stats["remainders"] == 0
        assert stats["allLowFromOpen"] is not None and len(low) > N_SLICES * 0.8, len(low)
    finally:
        gw.stop()


@pytest.mark.parametrize("k", [37, 211])
def test_scroll_to_slice_matches_gateway_rendered(desktop: Any, gateway: Any, ct_series: CtSeries,
                                                  viewer_token: str, k: int) -> None:
    desktop.evaluate("window.radloopViewer.setPreset('mediastinum')")
    assert desktop.evaluate(f"window.radloopViewer.scrollTo({k})"), f"slice {k} never showed at full resolution"
    assert desktop.evaluate("window.radloopViewer.currentIndex") == k
    assert desktop.inner_text("#counter") == f"{k + 1} / {N_SLICES}"
    shown = displayed_image(desktop, 512)
    server = gateway_rendered(gateway.base_url, viewer_token, ct_series.study, ct_series.series, ct_series.sops[k],
                              PRESETS["mediastinum"])
    other = gateway_rendered(gateway.base_url, viewer_token, ct_series.study, ct_series.series,
                             ct_series.sops[k + 15], PRESETS["mediastinum"])
    same = mean_abs_diff(shown, server)
    assert same < 4.0, f"slice {k} differs from the gateway's rendering by {same:.2f} grey levels on average"
    # Where slices k and k+15 differ in structure (the spiral vessel, lung vessels), the canvas follows slice k.
    moved = np.abs(server - other) > 60
    assert moved.sum() > 200
    near, far = mean_abs_diff(shown[moved], server[moved]), mean_abs_diff(shown[moved], other[moved])
    assert near < 0.3 * far, f"slice {k} is not told apart from slice {k + 15} ({near:.1f} vs {far:.1f})"
    assert float(np.corrcoef(shown.ravel(), server.ravel())[0, 1]) > 0.98


def test_window_presets_change_the_image(desktop: Any) -> None:
    shots = {}
    for name, (c, w) in PRESETS.items():
        desktop.click(f"[data-preset={name}]")
        desktop.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        win = desktop.evaluate("window.radloopViewer.getWindow()")
        assert abs(win["center"] - c) < 1 and abs(win["width"] - w) < 1, (name, win)
        assert desktop.inner_text("#voi") == f"W {w} L {c}"
        shots[name] = displayed_image(desktop, 256)
    assert mean_abs_diff(shots["lung"], shots["mediastinum"]) > 15
    assert mean_abs_diff(shots["bone"], shots["mediastinum"]) > 8
    # The bone window's wide range greys soft tissue (about 40 HU) down from mid-grey.
    soft = (shots["mediastinum"] > 100) & (shots["mediastinum"] < 160)
    assert shots["bone"][soft].mean() < shots["mediastinum"][soft].mean() - 30
    # The lung window lifts the lungs (-850 HU) out of black; the mediastinal window leaves them black.
    lungs = shots["mediastinum"] < 5
    assert shots["lung"][lungs].mean() > 40


def test_keyboard_wheel_and_slider_scroll(desktop: Any) -> None:
    desktop.evaluate("window.radloopViewer.scrollTo(100)")
    desktop.focus("#viewport")
    desktop.keyboard.press("ArrowDown")
    desktop.wait_for_function("window.radloopViewer.currentIndex === 101")
    desktop.keyboard.press("PageDown")
    desktop.wait_for_function("window.radloopViewer.currentIndex === 111")
    desktop.keyboard.press("ArrowUp")
    desktop.wait_for_function("window.radloopViewer.currentIndex === 110")
    box = desktop.locator("#viewport").bounding_box()
    desktop.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        desktop.mouse.wheel(0, 120)
        desktop.wait_for_timeout(60)
    desktop.wait_for_function("window.radloopViewer.currentIndex > 110")
    desktop.keyboard.press("End")
    desktop.wait_for_function(f"window.radloopViewer.currentIndex === {N_SLICES - 1}")
    assert desktop.inner_text("#counter") == f"{N_SLICES} / {N_SLICES}"
    desktop.keyboard.press("Home")
    desktop.wait_for_function("window.radloopViewer.currentIndex === 0")


def test_drag_to_window_zoom_and_pan(desktop: Any) -> None:
    desktop.evaluate("window.radloopViewer.setPreset('mediastinum')")
    box = desktop.locator("#viewport").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def drag(button: str, dx: float, dy: float) -> None:
        desktop.mouse.move(cx, cy)
        desktop.mouse.down(button=button)
        for i in range(1, 11):
            desktop.mouse.move(cx + dx * i / 10, cy + dy * i / 10)
        desktop.mouse.up(button=button)

    desktop.click("[data-tool=wl]")
    before = desktop.evaluate("window.radloopViewer.getWindow()")
    drag("left", 120, 60)
    after = desktop.evaluate("window.radloopViewer.getWindow()")
    assert abs(after["width"] - before["width"]) > 20 or abs(after["center"] - before["center"]) > 20, (before, after)
    cam0 = desktop.evaluate("window.radloopViewer.camera()")
    drag("right", 0, -150)  # right button zooms
    cam1 = desktop.evaluate("window.radloopViewer.camera()")
    assert abs(cam1["parallelScale"] - cam0["parallelScale"]) > 0.05 * cam0["parallelScale"], (cam0, cam1)
    drag("middle", 80, 40)  # middle button pans
    cam2 = desktop.evaluate("window.radloopViewer.camera()")
    assert max(abs(a - b) for a, b in zip(cam2["focalPoint"], cam1["focalPoint"], strict=True)) > 5, (cam1, cam2)
    desktop.click("[data-action=reset]")
    cam3 = desktop.evaluate("window.radloopViewer.camera()")
    assert abs(cam3["parallelScale"] - cam0["parallelScale"]) < 1e-3 * cam0["parallelScale"]


def test_scroll_frame_rate_is_recorded(desktop: Any) -> None:
    result = desktop.evaluate("window.radloopViewer.measureFps()")
    assert result["slices"] == N_SLICES
    record("desktop_scroll", {k: round(v, 2) for k, v in result.items()})


def test_desktop_screenshot(desktop: Any) -> None:
    desktop.evaluate("window.radloopViewer.setPreset('lung')")
    desktop.evaluate(f"window.radloopViewer.scrollTo({int(N_SLICES * 0.55)})")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / "viewer-desktop.png"
    desktop.screenshot(path=str(path))
    assert path.stat().st_size > 20_000


def test_phone_on_4g_touch_scroll_and_timings(browser: Any, gateway: Any, ct_series: CtSeries,
                                              viewer_token: str) -> None:
    """Phone viewport, 4G emulated (30 Mbit/s, 10 ms) after the page and its code have loaded."""
    context = browser.new_context(**PHONE)
    page = context.new_page()
    try:
        page.goto(viewer_url(gateway.base_url, ct_series.study, ct_series.series, viewer_token, autostart="0"))
        wait_state(page, ("idle",))
        throttle(page)
        page.evaluate("window.radloopViewer.start()")
        wait_state(page, ("ready",))
        page.wait_for_function("window.radloopViewer.stats().firstRenderAt !== null", timeout=30_000)
        img = displayed_image(page, 256)
        assert img.std() > 20, "the first image on the phone is blank"
        # One-finger vertical drag scrolls (the default touch tool), through CDP touch events.
        assert page.evaluate("window.radloopViewer.mode") == "scroll"
        start = page.evaluate("window.radloopViewer.currentIndex")
        box = page.locator("#viewport").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.3
        cdp = context.new_cdp_session(page)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for i in range(1, 16):
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y + 20 * i}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.wait_for_function(f"window.radloopViewer.currentIndex > {start}", timeout=10_000)
        page.evaluate(f"window.radloopViewer.scrollTo({start})")
        loaded = page.evaluate("window.radloopViewer.waitAllLoaded(60000)")
        stats = page.evaluate("window.radloopViewer.stats()")
        record("phone_4g", {"first_image_ms": stats["firstRenderAt"], "first_full_image_ms": stats["firstFullRenderAt"],
                            "metadata_ms": stats["metadataAt"], "all_low_ms": stats["allLowFromOpen"],
                            "all_full_ms": stats["fullSeriesFromOpen"] if loaded else None, "loaded": stats["loadedFull"]})
        page.evaluate("window.radloopViewer.setPreset('lung')")
        page.evaluate(f"window.radloopViewer.scrollTo({int(N_SLICES * 0.55)})")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "viewer-phone.png"))
        assert (SCREENSHOTS / "viewer-phone.png").stat().st_size > 20_000
    finally:
        context.close()


def _no_token_in(urls: list[str], *tokens: str) -> None:
    for u in urls:
        q = {k.lower() for k in parse_qs(urlsplit(u).query)}
        assert not q & {"token", "access_token"}, f"a token parameter in a URL: {u[:120]}"
        assert not any(t in u for t in tokens), f"a token in a URL: {u[:120]}"


def test_viewer_signs_in_without_a_token_in_any_url(browser: Any, gateway: Any, gateway_settings: Any,
                                                    ct_series: CtSeries, viewer_token: str) -> None:
    """No ``/viewer/?token=`` (issue 15/17): the viewer takes its token from the sign-in (the tab's session storage)
    or the URL fragment, which no request carries; no URL the browser requests, and no log line, holds a token."""
    page_path = f"/viewer/?{urlencode({'study': ct_series.study, 'series': ct_series.series, 'autostart': '0'})}"
    urls: list[str] = []
    context = browser.new_context(**DESKTOP)
    page = context.new_page()
    page.on("request", lambda r: urls.append(r.url))  # what goes over the wire (a fragment never does)
    try:
        # 1. No token: the series is refused (401) and the page offers the sign-in.
        page.goto(gateway.base_url + page_path)
        wait_state(page, ("idle",))
        page.evaluate("window.radloopViewer.start()")
        page.wait_for_function("window.radloopViewer.state === 'error'", timeout=30_000)
        assert "Sign-in is needed" in page.inner_text("#message")
        # 2. The sign-in (the workstation's development sign-in: environment=local) brings the tab back here.
        page.click("#sign-in")
        page.wait_for_function("window.radloopWorkstation && window.radloopWorkstation.state === 'signin'")
        page.fill("#signin-name", "dr-viewer")
        page.select_option("#signin-role", "viewer")
        page.click("#signin-dev button[type=submit]")
        page.wait_for_url(gateway.base_url + page_path, timeout=30_000)
        wait_state(page, ("idle",))
        signed_in = page.evaluate("sessionStorage.getItem('radloop.token')")
        assert signed_in and signed_in != viewer_token
        page.evaluate("window.radloopViewer.start()")
        wait_state(page, ("ready",))
        page.wait_for_function("window.radloopViewer.stats().firstRenderAt !== null", timeout=30_000)
        # The study list at /viewer, with the same tab's sign-in; no storage keys anywhere on the page.
        page.goto(f"{gateway.base_url}/viewer/")
        wait_state(page, ("list",))
        assert "CT CHEST PHANTOM" in page.inner_text("[data-testid=study-list]")
        page.click("text=Show series")
        link = page.locator("a.series").first
        link.wait_for(timeout=10_000)
        assert f"series={ct_series.series}" in (link.get_attribute("href") or "")
        html = page.content()
        assert "frames/" not in html and "dicom/" not in html and ".jph" not in html
    finally:
        context.close()
    # 3. A link with the token in its fragment (never sent): the page keeps it for the tab and clears the address.
    context = browser.new_context(**DESKTOP)
    page = context.new_page()
    page.on("request", lambda r: urls.append(r.url))  # what goes over the wire (a fragment never does)
    try:
        page.goto(viewer_url(gateway.base_url, ct_series.study, ct_series.series, viewer_token, autostart="0"))
        wait_state(page, ("idle",))
        assert "token" not in page.url
        page.evaluate("window.radloopViewer.start()")
        wait_state(page, ("ready",))
    finally:
        context.close()
    _no_token_in(urls, viewer_token, signed_in)
    # What the gateway wrote (its log, traces and audit under its var dir) holds neither token.
    written = [gateway.log_path, *(p for p in Path(gateway_settings.var_dir).rglob("*") if p.is_file())]
    for path in written:
        text = path.read_text(errors="replace")
        assert viewer_token not in text and signed_in not in text, f"a token in {path}"
    # 4. An old link with ?token=: the page does not use it (the series is refused) and drops it from the address.
    stale = mint_token(gateway_settings, "viewer", subject="stale-link")
    context = browser.new_context(**DESKTOP)
    page = context.new_page()
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.headers.get("authorization", "")))
    try:
        page.goto(f"{gateway.base_url}{page_path}&{urlencode({'token': stale})}")
        # (the gateway may refuse such a page request itself; then there is no viewer page to check)
        page.wait_for_function("['idle', 'error'].includes(window.radloopViewer?.state) || "
                               "(document.readyState === 'complete' && !document.querySelector('script'))")
        if page.evaluate("window.radloopViewer?.state") == "idle":
            assert "token" not in page.url
            page.evaluate("window.radloopViewer.start()")
            page.wait_for_function("window.radloopViewer.state === 'error'", timeout=30_000)
        assert f"Bearer {stale}" not in sent
    finally:
        context.close()


def test_triage_panel_shows_score_and_heatmap_toggle(browser: Any, gateway: Any, dx_series: CtSeries,
                                                     viewer_token: str) -> None:
    """The AI panel of a radiograph. The gateway serves the image; the verification service's case view is answered
    by the test in the shape the panel reads (probability, priority, model version, heatmap URL), so this checks
    the viewer's side of that contract: it asks with the viewer's token and shows what it gets."""
    import io

    from PIL import Image, ImageDraw

    sop = dx_series.sops[0]
    heat = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(heat).ellipse((60, 80, 130, 170), fill=(255, 40, 0, 200))
    buf = io.BytesIO()
    heat.save(buf, format="PNG")
    seen: list[dict[str, str]] = []

    # The shape of services/verification's case view; the heatmap is a presigned storage URL on another origin.
    heatmap_key = f"heatmaps/{dx_series.study}/{dx_series.series}/{sop}/v3.png"
    heatmap_url = f"http://127.0.0.1:9/radloop-images/{heatmap_key}?X-Amz-Signature=abc"

    def case(route: Any) -> None:
        seen.append(dict(route.request.headers))
        route.fulfill(status=200, content_type="application/json", body=json.dumps({
            "case_id": sop, "study_uid": dx_series.study, "series_uid": dx_series.series, "sop_uid": sop,
            "modality": "DX", "status": "unread", "reads_done": 0, "reads_required": 1,
            "ai": {"status": "scored", "probability": 0.912, "threshold": 0.5, "priority": "urgent",
                   "model_version": 3, "reason": None, "heatmap_key": heatmap_key, "heatmap_url": heatmap_url},
            "history": []}))

    context = browser.new_context(**DESKTOP)
    page = context.new_page()
    try:
        # Without a score (verification answers 404 here: the gateway alone does not serve it), no panel.
        page.goto(viewer_url(gateway.base_url, dx_series.study, dx_series.series, viewer_token))
        wait_state(page)
        assert page.evaluate("window.radloopViewer.info.modality") == "DX"
        assert page.locator("#triage").is_hidden()
        assert displayed_image(page, 128).std() > 20
        page.route(f"**/verification/cases/{sop}", case)
        heat_headers: list[dict[str, str]] = []

        def heatmap(route: Any) -> None:
            heat_headers.append(dict(route.request.headers))
            route.fulfill(status=200, content_type="image/png", body=buf.getvalue())

        page.route("http://127.0.0.1:9/radloop-images/**", heatmap)
        page.reload()
        wait_state(page)
        page.locator("#triage").wait_for(state="visible", timeout=10_000)
        assert "91.2%" in page.inner_text("#triage") and "urgent" in page.inner_text("#triage")
        assert "model v3" in page.inner_text("#triage")
        assert seen and seen[0].get("authorization") == f"Bearer {viewer_token}"
        before = displayed_image(page, 128)
        page.check("#heatmap-toggle")
        page.locator("#heatmap").wait_for(state="visible", timeout=10_000)
        overlay = page.locator("#heatmap").bounding_box()
        viewport = page.locator("#viewport").bounding_box()
        assert overlay["width"] > 100 and overlay["x"] >= viewport["x"] - 1
        assert heat_headers and "authorization" not in heat_headers[0]  # a presigned URL carries its own auth
        assert heatmap_key not in page.inner_text("body")  # storage keys never reach the page
        page.uncheck("#heatmap-toggle")
        assert page.locator("#heatmap").is_hidden()
        assert mean_abs_diff(displayed_image(page, 128), before) < 1.0  # the image itself is untouched
    finally:
        context.close()
