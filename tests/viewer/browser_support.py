"""Helpers shared by the viewer tests and bench/viewer.py: open the viewer in Playwright, read its canvas, fetch
the gateway's rendered image, throttle the network through the Chrome DevTools Protocol."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
from PIL import Image

#: Cornerstone3D's own progressive-loading measurements use this "4G" profile.
FOUR_G = {"offline": False, "latency": 10, "downloadThroughput": 30_000_000 / 8, "uploadThroughput": 15_000_000 / 8}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 800}, "device_scale_factor": 1}


def viewer_url(base: str, study: str, series: str, token: str, **extra: str) -> str:
    """The viewer's address for a series, the token in the URL fragment (``#token=``): browsers never send a
    fragment to a server, so it reaches no access log or proxy; the page moves it into the tab's session storage."""
    from urllib.parse import urlencode

    return f"{base}/viewer/?{urlencode({'study': study, 'series': series, **extra})}#{urlencode({'token': token})}"


def wait_state(page: Any, states: tuple[str, ...] = ("ready", "error", "idle", "list"), timeout_ms: int = 60_000) -> str:
    """Wait until window.radloopViewer reaches one of ``states``; raise with the page's error when it failed."""
    js = "(states) => window.radloopViewer && states.includes(window.radloopViewer.state)"
    page.wait_for_function(js, arg=list(states), timeout=timeout_ms)
    state = page.evaluate("window.radloopViewer.state")
    if state == "error":
        raise AssertionError(f"the viewer failed: {page.evaluate('window.radloopViewer.error')}")
    return str(state)


def throttle(page: Any, conditions: dict[str, Any] | None = None) -> Any:
    """Emulate network conditions on this page (CDP Network.emulateNetworkConditions); returns the CDP session."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    cdp.send("Network.emulateNetworkConditions", conditions or FOUR_G)
    return cdp


def canvas_image(page: Any) -> np.ndarray:
    """The viewport canvas as an RGB uint8 array (device pixels)."""
    data_url = page.evaluate("document.querySelector('#viewport canvas').toDataURL('image/png')")
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def displayed_image(page: Any, size: int) -> np.ndarray:
    """The part of the canvas where the image is drawn, resampled to ``size``² grey levels (float32, 0..255)."""
    rgb = canvas_image(page)
    r = page.evaluate("window.radloopViewer.imageCanvasRect()")
    box = (round(r["x"]), round(r["y"]), round(r["x"] + r["width"]), round(r["y"] + r["height"]))
    grey = Image.fromarray(rgb).convert("L").crop(box).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32)


def gateway_rendered(base: str, token: str, study: str, series: str, sop: str, window: tuple[float, float]) -> np.ndarray:
    """The gateway's rendered PNG of frame 1 with a linear window, as float32 grey levels."""
    url = f"{base}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered"
    r = httpx.get(url, params={"window": f"{window[0]},{window[1]},linear"},
                  headers={"Authorization": f"Bearer {token}", "Accept": "image/png"}, timeout=30)
    r.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("L"), dtype=np.float32)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))
