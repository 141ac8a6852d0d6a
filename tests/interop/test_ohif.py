"""OHIF served by the gateway at /ohif, tested in headless Debian Chromium: it opens a study through /ohif, asks
for HTJ2K frames with the bearer token, draws the image (non-blank canvas pixels), and lists the AI SR series in the
study browser. Also: the SPA fallback, and the CORS allow-list answered on a preflight."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.auth import mint_token
from tests.interop.conftest import Platform, ScoredStudy
from tests.viewer.series_store import REPO, GatewayProcess, start_gateway

OTHER_ORIGIN = "https://ohif.hospital.example"


def ensure_ohif() -> Path:
    """ohif/dist, fetched from the lock file when missing (``make setup`` normally does it)."""
    dist = REPO / "ohif" / "dist"
    if not (dist / ".fetch-stamp").exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_ohif.py")], check=True, timeout=900)
    return dist


@pytest.fixture(scope="module")
def gateway(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    dist = ensure_ohif()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RADLOOP_CORS_ALLOW_ORIGINS", f'["{OTHER_ORIGIN}"]')
        mp.setenv("RADLOOP_OHIF_DIST", str(dist))
        gw = start_gateway(platform.dep.settings, tmp_path_factory.mktemp("gw") / "gateway.log")
    try:
        yield gw
    finally:
        gw.stop()


def test_ohif_is_served_with_its_spa_fallback(gateway: GatewayProcess) -> None:
    index = httpx.get(f"{gateway.base_url}/ohif/", timeout=10)
    assert index.status_code == 200 and 'window.PUBLIC_URL="/ohif/"' in index.text
    assert 'src="/ohif/app-config.js"' in index.text
    route = httpx.get(f"{gateway.base_url}/ohif/viewer", params={"StudyInstanceUIDs": "1.2.3"}, timeout=10)
    assert route.status_code == 200 and route.text == index.text
    config = httpx.get(f"{gateway.base_url}/ohif/app-config.js", timeout=10)
    assert "routerBasename: '/ohif'" in config.text and "image/jphc" in config.text
    assert httpx.get(f"{gateway.base_url}/ohif/no-such-bundle.js", timeout=10).status_code == 404


def test_cors_preflight_follows_the_allow_list(gateway: GatewayProcess) -> None:
    url = f"{gateway.base_url}/dicomweb/studies"
    asked = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization, accept"}
    ok = httpx.options(url, headers={"Origin": OTHER_ORIGIN, **asked}, timeout=10)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == OTHER_ORIGIN
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    refused = httpx.options(url, headers={"Origin": "https://evil.example", **asked}, timeout=10)
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    # a simple request from an allowed origin still needs the token
    assert httpx.get(url, headers={"Origin": OTHER_ORIGIN}, timeout=10).status_code == 401


_NONBLANK = """() => {
  for (const c of document.querySelectorAll('canvas.cornerstone-canvas, .cornerstone-viewport-element canvas')) {
    if (!c.width || !c.height) continue;
    const ctx = c.getContext('2d');
    if (!ctx) continue;
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < d.length; i += 4 * 7) {
      if (d[i] || d[i + 1] || d[i + 2]) seen.add(d[i]);
      if (seen.size > 8) return true;  // many grey levels: an image, not a blank or a flat fill
    }
  }
  return false;
}"""


@pytest.mark.e2e  # a real browser, as tests/viewer
def test_ohif_opens_the_study_with_htj2k_frames_and_lists_the_sr(platform: Platform, scored: ScoredStudy,
                                                                  gateway: GatewayProcess, tmp_path: Path,
                                                                  browser: Any) -> None:
    token = mint_token(platform.dep.settings, "viewer")
    frame_requests: list[dict[str, str]] = []
    dicomweb: list[tuple[str, str]] = []
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # the session's browser
    try:

        def on_request(req: object) -> None:
            url = req.url  # type: ignore[attr-defined]
            if "/dicomweb/" in url:
                h = req.headers  # type: ignore[attr-defined]
                dicomweb.append((url, h.get("authorization", "")))
                if "/frames/" in url:
                    frame_requests.append(h)

        page.on("request", on_request)
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text[:200]) if m.type == "error" else None)
        page.on("response", lambda r: problems.append(f"{r.status} {r.url[:150]}") if r.status >= 400 else None)
        # The built-in viewer keeps the tab's token in sessionStorage under "radloop.token" (viewer/src/api.js);
        # OHIF opened in that tab must send that same token, with no token in its URL.
        page.goto(f"{gateway.base_url}/ohif/no-such-page.txt")  # any page of the origin, to reach its storage
        page.evaluate("t => sessionStorage.setItem('radloop.token', t)", token)
        page.goto(f"{gateway.base_url}/ohif/viewer?StudyInstanceUIDs={scored.study}")
        deadline = time.monotonic() + 60
        drawn = False
        while time.monotonic() < deadline and not drawn:
            drawn = bool(page.evaluate(_NONBLANK))
            if not drawn:
                page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "ohif.png"))
        assert drawn, f"no image drawn; DICOMweb: {dicomweb[:10]}; problems: {problems[:20]}"
        assert "token=" not in page.url  # OHIF took the token out of the address bar
        # the study browser lists the AI results as series of the study (modality and description)
        page.get_by_text("AI triage result (radloop)").first.wait_for(timeout=30_000)
        page.get_by_text("SR", exact=True).first.wait_for(timeout=5_000)
        page.get_by_text("AI heatmap Grad-CAM", exact=False).first.wait_for(timeout=5_000)
    finally:
        page.close()
    assert dicomweb and all(auth == f"Bearer {token}" for _, auth in dicomweb)
    assert frame_requests, "OHIF asked for no frames"
    assert all("image/jphc" in h.get("accept", "") and "1.2.840.10008.1.2.4.202" in h["accept"]
               for h in frame_requests)
