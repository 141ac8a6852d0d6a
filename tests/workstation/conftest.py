"""Fixtures of the workstation tests: one local platform per module (the entry proxy, ingestion, the streaming
gateway and verification as real processes on the session's moto server), cases stored through the entry point
with STOW-RS and scored by InstanceScored events on the real bus (the triage service's part, with a Grad-CAM PNG in
the images bucket), and headless Debian Chromium driven by Playwright (the viewer tests' ``browser`` fixture).

The browser tests are ``e2e`` (each module sets it: the rule in tests/conftest.py would make them ``integration``,
as they use the moto server); the sign-in route and demo link tests are ``unit``.
"""

from __future__ import annotations

import io
import itertools
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from radloop.local.embedded_aws import free_port
from radloop.local.platform import LocalPlatform
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.events import InstanceScored
from shared.publisher import EventPublisher
from shared.settings import DEFAULT_PORTS, Settings
from tests.ingestion.stow_helpers import stow
from tests.support.triage_verification_procs import capture_queue, captured
from tests.viewer.conftest import ensure_viewer_built, run_async
from tests.viewer.phantom import make_radiograph, to_bytes

ROOT_UID = "1.2.826.0.1.3680043.10.1387.77."
SERVICES = ("ingestion", "streaming_gateway", "verification")
LEASE_S = 6.0
THRESHOLD = 0.5
MODEL_VERSION = 3
_seq = itertools.count(1)


@dataclass
class Case:
    sop: str
    study: str
    series: str
    probability: float

    @property
    def priority(self) -> str:
        return "urgent" if self.probability >= THRESHOLD else "routine"


@dataclass
class Platform:
    platform: LocalPlatform
    settings: Settings
    capture: str
    tag: str
    cases: list[Case] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.platform.entry_url

    @property
    def worklist_url(self) -> str:
        return f"{self.base}/viewer/worklist/"

    def headers(self, role: str = "radiologist", subject: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings, role, subject=subject)}"}

    def api(self, method: str, path: str, *, role: str = "radiologist", subject: str | None = None,
            **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.base}{path}", headers=self.headers(role, subject), timeout=30, **kw)

    def case_view(self, sop: str, role: str = "admin") -> dict[str, Any]:
        r = self.api("GET", f"/verification/cases/{sop}", role=role, subject="checker")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def worklist(self, **params: str) -> list[dict[str, Any]]:
        r = self.api("GET", "/verification/worklist", params={"limit": 100, **params})
        r.raise_for_status()
        return r.json()["items"]  # type: ignore[no-any-return]

    def events(self, wait_s: float = 1.0) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            async with AwsClients(self.settings) as c:
                return await captured(c, self.capture, wait_s=wait_s)

        return run_async(go)

    def add_cases(self, probabilities: list[float], *, same_series: bool = False) -> list[Case]:
        """Store radiographs through the entry point (STOW-RS) and score them; returns them in input order."""
        n = next(_seq)
        study = f"{ROOT_UID}{self.tag}.{n}"
        out, parts = [], []
        for i, p in enumerate(probabilities):
            ds = make_radiograph(seed=11 + i, size=256)
            st = study if same_series else f"{study}.{i}"
            ds.StudyInstanceUID = st
            ds.SeriesInstanceUID = f"{st}.2"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{st}.3.{i + 1}"
            ds.InstanceNumber = i + 1
            parts.append(to_bytes(ds))
            out.append(Case(sop=ds.SOPInstanceUID, study=st, series=ds.SeriesInstanceUID, probability=p))
        r = stow(self.base, mint_token(self.settings, "pacs"), parts)
        assert r.status_code == 200, r.text[:500]
        run_async(lambda: self._score(out))
        deadline = time.monotonic() + 60
        pending = {c.sop for c in out}
        while pending and time.monotonic() < deadline:
            for sop in list(pending):
                r = self.api("GET", f"/verification/cases/{sop}", role="admin", subject="seeder")
                if r.status_code == 200 and r.json()["ai"]["status"] == "scored":
                    pending.discard(sop)
            time.sleep(0.3)
        assert not pending, f"cases never became scored: {pending}"
        self.cases += out
        return out

    async def _score(self, cases: list[Case]) -> None:
        async with AwsClients(self.settings) as c:
            s3 = await c.s3()
            events = []
            for case in cases:
                key = f"heatmaps/{case.study}/{case.sop}.png"
                await s3.put_object(Bucket=self.settings.topology.bucket("images"), Key=key, Body=heatmap_png(),
                                    ContentType="image/png")
                events.append(InstanceScored(
                    study_uid=case.study, series_uid=case.series, sop_uid=case.sop, status="scored",
                    probability=case.probability, threshold=THRESHOLD, priority=case.priority,  # type: ignore[arg-type]
                    model_version=MODEL_VERSION, heatmap_key=key))
            await EventPublisher(c, "triage").publish_many(events)


def heatmap_png(size: int = 256) -> bytes:
    """A Grad-CAM-like overlay: a red blob, transparent elsewhere."""
    yy, xx = np.mgrid[0:size, 0:size]
    a = np.exp(-(((xx - size * 0.35) ** 2 + (yy - size * 0.45) ** 2) / (2 * (size * 0.12) ** 2)))
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = (80 * (1 - a)).astype(np.uint8)
    rgba[..., 3] = (220 * a).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def start_platform(aws_endpoint: str, var_dir: Path, *, read_mode: str = "single") -> Iterator[Platform]:
    """The local platform (entry proxy + the services the workstation uses), stopped by PID afterwards."""
    ensure_viewer_built()
    tag = str(10**8 + uuid.uuid4().int % (9 * 10**8))  # digits: it goes into the test UIDs
    settings = Settings(aws_endpoint_url=aws_endpoint, prefix=f"ws-{tag}", var_dir=var_dir, aws_max_attempts=2)
    ports = {name: free_port() for name in DEFAULT_PORTS if name != "aws"}
    env = {"RADLOOP_VERIFICATION_READ_MODE": read_mode, "RADLOOP_VERIFICATION_LEASE_S": str(LEASE_S),
           "RADLOOP_CONSUMER_WAIT_TIME_S": "1", "RADLOOP_DRAIN_TIMEOUT_S": "3",
           "RADLOOP_VERIFICATION_CHECK_INTERVAL_S": "1", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    p = LocalPlatform(settings=settings, ports=ports, services=SERVICES, extra_env=env)
    try:
        # In a thread: start() uses asyncio.run, and the caller may be inside a running loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(p.start).result(timeout=300)
        p.wait_healthy(120)

        async def prep() -> str:
            async with AwsClients(settings) as c:
                return await capture_queue(c, ["ImageVerified"])

        capture = run_async(prep)
        yield Platform(p, settings, capture, tag)
    finally:
        p.stop()


DESKTOP = {"viewport": {"width": 1280, "height": 800}, "device_scale_factor": 1}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


def sign_in(page: Any, p: Platform, name: str, role: str = "radiologist", *, query: str = "") -> None:
    """Sign in through the development sign-in page, as a person would."""
    page.goto(f"{p.worklist_url}{query}")
    page.wait_for_function("window.radloopWorkstation && window.radloopWorkstation.state === 'signin'")
    page.fill("#signin-name", name)
    page.select_option("#signin-role", role)
    page.click("#signin-dev button[type=submit]")
    page.wait_for_function("['worklist', 'reading'].includes(window.radloopWorkstation.state)")


def wait_reading(page: Any, sop: str, timeout_ms: int = 30_000) -> None:
    """Wait until case ``sop`` is open, claimed and its first image drawn."""
    page.wait_for_function(
        """(sop) => { const w = window.radloopWorkstation; const v = w.viewer();
             return w.caseId === sop && w.claim && v && v.imageShown; }""", arg=sop, timeout=timeout_ms)


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core (from viewer/node_modules) on the page: violations of its WCAG 2.0/2.1 A and AA rules."""
    axe = Path(__file__).resolve().parents[2] / "viewer" / "node_modules" / "axe-core" / "axe.min.js"
    page.add_script_tag(content=axe.read_text())
    result = page.evaluate("""async () => {
        const r = await axe.run(document, { runOnly: { type: 'tag',
          values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
        return r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help,
          nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ' :: ' + n.failureSummary) })); }""")
    return list(result)


def watch_urls(page: Any, urls: list[str]) -> None:
    """Collect every URL the page requests or navigates to (tests assert that none holds a token)."""
    page.on("request", lambda req: urls.append(req.url))
    page.on("framenavigated", lambda fr: urls.append(fr.url))
