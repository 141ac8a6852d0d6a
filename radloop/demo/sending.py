"""The simulated PACS side of the demo: each wave sent the three real ways, the late arrivals, and the CT series
sent and then streamed back through the gateway as a viewer would."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console

from radloop.demo import pacs
from radloop.demo.api import PlatformApi
from radloop.demo.cohort import Cohort
from radloop.demo.config import DemoConfig, DemoState
from radloop.demo.ui import progress_bar, wait_until
from radloop.local.platform import LocalPlatform
from shared.aws import boto3_client


class Sender:
    """Sends the cohort to the platform and waits until it is on the worklist (and scored, where that is awaited)."""

    def __init__(self, cfg: DemoConfig, state: DemoState, api: PlatformApi, cohort: Cohort, platform: LocalPlatform,
                 console: Console, lock: threading.Lock) -> None:
        self.cfg = cfg
        self.state = state
        self.api = api
        self.cohort = cohort
        self.platform = platform
        self.console = console
        self._lock = lock  # the figures that the sender threads append to

    def send_wave(self, w: int) -> None:
        """Wait until wave ``w`` is rendered, then send it."""
        self.cohort.rendered(w, f"wave {w + 1}")
        self.send_batch(self.state.waves[w], f"wave {w + 1}")

    def send_batch(self, wave: list[dict[str, Any]], name: str) -> None:
        """Send radiographs the three ways and wait until every one is on the worklist."""
        c = self.cfg
        n_dimse = int(len(wave) * c.dimse_share)
        n_s3 = int(len(wave) * c.s3_share)
        dimse = [r["file"] for r in wave[:n_dimse]]
        s3 = [r["file"] for r in wave[n_dimse : n_dimse + n_s3]]
        stow = [r["file"] for r in wave[n_dimse + n_s3 :]]
        self.state.wave_started.append(time.time())
        with progress_bar(self.console) as prog, ThreadPoolExecutor(self.cfg.senders) as pool:
            t = prog.add_task(f"{name}: sending {len(wave)} radiographs (STOW-RS, C-STORE, S3)", total=len(wave))
            token = self.api.token("pacs", "demo-pacs")

            def stow_batch(files: list[Path]) -> None:
                res = pacs.stow(self.api.http, f"{self.api.base}/dicomweb", token, files)
                with self._lock:
                    self.state.ingest_ms += [x["per_instance_ms"] for x in res for _ in range(x["count"])]
                prog.advance(t, len(files))

            def dimse_all() -> None:
                pacs.c_store("127.0.0.1", self.platform.ports["dimse"], dimse)
                prog.advance(t, len(dimse))

            def s3_all() -> None:
                s3c = boto3_client(self.api.settings.model_copy(update={"aws_endpoint_url": self.platform.endpoint}), "s3")
                pacs.drop_s3(s3c, self.api.settings.topology.bucket("ingestion"), s3,
                             prefix=f"imports/{name.replace(' ', '-')}/")
                prog.advance(t, len(s3))

            # a PACS sends over a few associations at once: STOW-RS batches, C-STORE and the S3 drop side by side
            jobs = [pool.submit(stow_batch, stow[i : i + 8]) for i in range(0, len(stow), 8)]
            jobs += [pool.submit(dimse_all)] if dimse else []
            jobs += [pool.submit(s3_all)] if s3 else []
            for job in jobs:
                job.result()  # the first failure propagates, as it did when sending one batch at a time
            self.state.sent_by["stow"] += len(stow)
            self.state.sent_by["dimse"] += len(dimse)
            self.state.sent_by["s3"] += len(s3)
        expected = {r["sop_uid"] for r in wave}
        wait_until(f"{name} to reach the worklist", lambda: expected <= self.api.worklist_ids(), 300, 2.0)

    def send_final(self) -> dict[str, int]:
        """The held-back radiographs arrive after the loop: triage must score them with the current champion."""
        batch = self.state.final_wave
        if not batch:
            return {}
        self.cohort.rendered(len(self.state.waves), "after the loop")
        self.send_batch(batch, "after the loop")
        expected = {r["sop_uid"] for r in batch}

        def scored() -> dict[str, int] | None:
            versions: dict[str, int] = {}
            for i in self.api.worklist():
                if i["sop_uid"] in expected:
                    ai = i.get("ai") or {}
                    if ai.get("status") == "pending":
                        return None
                    key = f"v{ai['model_version']}" if ai.get("model_version") else str(ai.get("status"))
                    versions[key] = versions.get(key, 0) + 1
            return versions

        with self.console.status("waiting for triage to score the late arrivals"):
            return wait_until("triage scores of the late arrivals", scored, 120, 1.0)  # type: ignore[no-any-return]

    def wait_scored(self, wave: list[dict[str, Any]], name: str) -> None:
        """Before a round, wait until the champion has scored the wave the radiologists will read: images that came
        before any model was approved are scored from triage's backlog when the first one is."""
        if self.api.champion() is None:
            return  # nothing can score them: the worklist stays in arrival order
        from services.triage.domain.priority import AWAITING_MODEL

        expected = {r["sop_uid"] for r in wave}

        def unscored(ai: dict[str, Any]) -> bool:  # not yet triaged, or in the backlog (not failed: that is final)
            return ai.get("status") == "pending" or (ai.get("status") == "unscored" and ai.get("reason") == AWAITING_MODEL)

        def waiting() -> int:
            return sum(1 for i in self.api.worklist() if i["sop_uid"] in expected and unscored(i.get("ai") or {}))

        with self.console.status(f"{name}: waiting for the champion to score it (triage's backlog)"):
            try:
                wait_until(f"triage to score {name}", lambda: waiting() == 0, 120, 1.0)
            except TimeoutError as exc:  # the round still runs, in arrival order for what is left
                self.state.errors.append(str(exc))


    def stream_ct(self) -> dict[str, Any]:
        """Send the CT series, then fetch it through the gateway as a viewer would."""
        token = self.api.token("pacs", "demo-pacs")
        if not self.state.ct_files:
            with self.console.status(f"finishing the {self.cfg.ct_slices}-slice CT series (rendered in the background)"):
                self.state.ct_files = self.cohort.ct_files()
        files = self.state.ct_files
        with progress_bar(self.console) as prog:
            t = prog.add_task("sending the CT series (STOW-RS)", total=len(files))
            for i in range(0, len(files), 16):
                pacs.stow(self.api.http, f"{self.api.base}/dicomweb", token, files[i : i + 16], batch=16)
                prog.advance(t, len(files[i : i + 16]))
        from pydicom import dcmread

        ds = dcmread(files[0], stop_before_pixels=True)
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        self.state.ct_series = (study, series)
        vt = self.api.token("viewer", "demo-viewer")
        h = {"Authorization": f"Bearer {vt}"}

        def count() -> int:
            r = self.api.http.get(f"{self.api.base}/dicomweb/studies/{study}/series/{series}/instances", headers=h)
            return len(r.json()) if r.status_code == 200 else 0

        wait_until("the CT series to be indexed", lambda: count() >= len(files), 240, 1.0)
        instances = self.api.http.get(f"{self.api.base}/dicomweb/studies/{study}/series/{series}/instances", headers=h).json()
        sops = sorted(instances, key=lambda d: int((d.get("00200013", {}).get("Value") or [0])[0]))
        sop_uids = [d["00080018"]["Value"][0] for d in sops]
        url = f"{self.api.base}/dicomweb/studies/{study}/series/{series}/instances/{{}}/frames/1"
        accept = {"Accept": 'multipart/related; type="image/jphc"'}
        mid = sop_uids[len(sop_uids) // 2]
        t0 = time.perf_counter()
        first = self.api.http.get(url.format(mid), params={"resolution": 0}, headers={**h, **accept})
        first_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        total = 0

        def fetch(sop: str) -> int:
            r = self.api.http.get(url.format(sop), headers={**h, **accept})
            r.raise_for_status()
            return len(r.content)

        with ThreadPoolExecutor(8) as pool:
            total = sum(pool.map(fetch, sop_uids))
        full_ms = (time.perf_counter() - t0) * 1000
        return {"frames": len(sop_uids), "first_image_ms": round(first_ms, 1), "full_series_ms": round(full_ms, 1),
                "series_fps": round(len(sop_uids) / (full_ms / 1000), 1), "bytes_first_image": len(first.content),
                "bytes_total": total}

