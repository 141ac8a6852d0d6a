"""Streaming benchmark: the radloop gateway against Orthanc + DICOMweb plugin, same corpus, same client, same run.

Corpus: a 300-instance CT series (512x512 int16) made from the real ``693_UNCR`` file (each slice offset so the
frames differ). The gateway's data is stored exactly as ingestion stores it (HTJ2K frames, index items) in a moto
server; Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) gets the same 300 files through its REST API. Both run on
loopback, started and stopped by this script.

Measured for both servers (aiohttp client, keep-alive):

- time to first image (cold): the gateway's lowest resolution (``?resolution=0``) and full frame; Orthanc's frame;
- the whole series at concurrency 8 (cold, i.e. the first pass, and warm);
- single-frame latency p50/p99 at concurrency 1 and 16, and frames/s (warm);
- series ``metadata`` and the QIDO instance search of the series (cold first call, then median of 5).

Gateway frames are measured in two media types: the stored HTJ2K codestream (``image/jphc``, what a viewer such as
Cornerstone3D asks for) and decoded uncompressed pixels (``application/octet-stream``, what Orthanc returns).
Results: ``bench/results/stream.json``. Usage: ``python bench/stream.py [--instances 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom.uid import generate_uid  # noqa: E402

from radloop.local.embedded_aws import free_port, start_embedded_aws  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from shared.aws import AwsClients  # noqa: E402
from shared.bootstrap import bootstrap_topology  # noqa: E402
from shared.htj2k import decode, number_of_levels  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.streaming_gateway.store import load_testdata, make_dicom, run_gateway, store_instance  # noqa: E402

OCTET = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
JPHC = 'multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202'
DEADLINE_S = 420.0


def corpus(n: int, study: str | None = None) -> tuple[str, str, list[str], list[bytes]]:
    ct = load_testdata("693_UNCR.dcm")
    base = ct.pixel_array.astype(np.int16)
    study, series = study or generate_uid(), generate_uid()
    sops, files = [], []
    for k in range(n):
        sop = generate_uid()
        px = (base + np.int16(k % 50)).astype(np.int16)
        files.append(make_dicom(ct, study=study, series=series, sop=sop, patient_name="BENCH^CT", patient_id="BENCH",
                                study_date="20240101", accession="B1", modality="CT", instance_number=k + 1, pixels=px))
        sops.append(sop)
    return study, series, sops, files


async def store_gateway(settings: Settings, files: list[bytes]) -> None:
    async with AwsClients(settings) as c:
        await bootstrap_topology(c)
        # The helper's index counters are read-modify-write, so its index writes are serialised by a lock; the
        # encoding and the S3 writes run concurrently.
        lock = asyncio.Lock()
        sem = asyncio.Semaphore(8)

        async def one(data: bytes) -> None:
            async with sem:
                await store_instance(c, data, index_lock=lock)

        await asyncio.gather(*(one(d) for d in files))


def start_orthanc(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port, dicom_port = free_port(), free_port()
    plugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
    cfg = {
        "Name": "bench", "StorageDirectory": str(tmp / "db"), "IndexDirectory": str(tmp / "db"),
        "HttpPort": port, "DicomPort": dicom_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "HttpServerEnabled": True, "DicomServerEnabled": False, "StorageCompression": False,
        "ConcurrentJobs": 2, "HttpThreadsCount": 50,
        # Without these, Orthanc 1.10's HTTP server takes 70-150 ms per 512 KB response here (Nagle and delayed
        # ACKs); with them, about 3 ms. The comparison uses the tuned configuration.
        "TcpNoDelay": True, "KeepAlive": True, "HttpCompressionEnabled": False,
    }
    (tmp / "orthanc.json").write_text(json.dumps(cfg))
    log = open(tmp / "orthanc.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["Orthanc", str(tmp / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(tmp / 'orthanc.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/system", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("Orthanc did not start in 30 s")


def stop_orthanc(proc: subprocess.Popen[bytes]) -> None:
    """Stop the Orthanc that :func:`start_orthanc` started, by its PID (bench/dicomweb.py shares both)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


async def upload_orthanc(url: str, files: list[bytes]) -> None:
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(4)

        async def one(data: bytes) -> None:
            async with sem, s.post(f"{url}/instances", data=data,
                                   headers={"Content-Type": "application/dicom"}) as r:
                assert r.status == 200, await r.text()

        await asyncio.gather(*(one(d) for d in files))


class Server:
    def __init__(self, name: str, root: str, headers: dict[str, str]) -> None:
        self.name, self.root, self.headers = name, root, headers

    def frame(self, study: str, series: str, sop: str, n: int = 1) -> str:
        return f"{self.root}/studies/{study}/series/{series}/instances/{sop}/frames/{n}"


async def fetch(s: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bytes:
    async with s.get(url, headers=headers) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {url} -> {r.status}: {body[:200]!r}")
        return body


async def timed_batch(s: aiohttp.ClientSession, urls: list[str], headers: dict[str, str], concurrency: int
                      ) -> tuple[float, list[float], int]:
    """Fetch every URL with ``concurrency`` workers: (wall seconds, per-request latencies in ms, bytes)."""
    lat: list[float] = []
    nbytes = 0
    queue = list(enumerate(urls))

    async def worker() -> None:
        nonlocal nbytes
        while queue:
            _, u = queue.pop(0)
            t = time.perf_counter()
            body = await fetch(s, u, headers)
            lat.append((time.perf_counter() - t) * 1000)
            nbytes += len(body)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, lat, nbytes


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


async def measure(srv: Server, study: str, series: str, sops: list[str], accept: str, *, first: bool,
                  tti: dict[str, str] | None = None, warm: tuple[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    h = {**srv.headers, "Accept": accept}
    conn = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=conn) as s:
        if warm is not None:
            await fetch(s, srv.frame(study, *warm), h)
        if first and tti:
            for label, acc in tti.items():
                url = srv.frame(study, series, sops[len(sops) // 2])
                q = "?resolution=0" if label.endswith("lowest") else ""
                t = time.perf_counter()
                body = await fetch(s, url + q, {**srv.headers, "Accept": acc})
                if acc == "image/jphc":  # the image is on screen once decoded
                    decode(body, skip_levels=number_of_levels(body) if q else 0)
                out[f"time_to_first_image_{label}_ms"] = (time.perf_counter() - t) * 1000
        urls = [srv.frame(study, series, sop) for sop in sops]
        if first:
            wall, _, nb = await timed_batch(s, urls, h, 8)
            out["series_cold_c8_s"] = wall
            out["series_bytes"] = nb
        wall, _, nb = await timed_batch(s, urls, h, 8)
        out["series_warm_c8_s"] = wall
        wall, lat1, _ = await timed_batch(s, urls[:150], h, 1)
        out["frame_c1_p50_ms"], out["frame_c1_p99_ms"] = pct(lat1, 50), pct(lat1, 99)
        wall, lat16, _ = await timed_batch(s, urls + urls, h, 16)
        out["frame_c16_p50_ms"], out["frame_c16_p99_ms"] = pct(lat16, 50), pct(lat16, 99)
        out["frames_per_s_c16"] = len(lat16) / wall
    return out


async def measure_json(srv: Server, study: str, series: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    h = {**srv.headers, "Accept": "application/dicom+json"}
    async with aiohttp.ClientSession() as s:
        for label, url in (("series_metadata", f"{srv.root}/studies/{study}/series/{series}/metadata"),
                           ("qido_instances", f"{srv.root}/studies/{study}/series/{series}/instances")):
            times = []
            for _ in range(6):
                t = time.perf_counter()
                body = await fetch(s, url, h)
                times.append((time.perf_counter() - t) * 1000)
            out[f"{label}_first_ms"] = times[0]
            out[f"{label}_ms"] = statistics.median(times[1:])
            out[f"{label}_results"] = len(json.loads(body))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--no-orthanc", action="store_true", help="measure the gateway only")
    args = ap.parse_args()
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    results: dict[str, Any] = {"instances": args.instances, "frame": "512x512 int16 CT (693_UNCR)",
                               "machine": f"{os.cpu_count()} CPUs, client and servers on the same host"}
    moto = start_embedded_aws(log_path=tmp / "moto.log")
    orthanc_proc = None
    try:
        settings = Settings(aws_endpoint_url=moto.endpoint, prefix=f"bench-{os.getpid()}", var_dir=tmp / "var",
                            aws_max_attempts=2)
        t = time.monotonic()
        study, series, sops, files = corpus(args.instances)
        # A one-instance series in the same study: each server serves one frame of it before the timings, so
        # time-to-first-image is that of a series never opened before, on a server that is already running.
        _, warm_series, warm_sops, warm_files = corpus(1, study)
        files = files + warm_files
        asyncio.run(store_gateway(settings, files))
        results["gateway_store_s"] = time.monotonic() - t
        token = mint_token(settings, "viewer")
        if not args.no_orthanc and shutil.which("Orthanc"):
            orthanc_proc, ourl = start_orthanc(tmp)
            t = time.monotonic()
            asyncio.run(upload_orthanc(ourl, files))
            results["orthanc_store_s"] = time.monotonic() - t
        del files
        with run_gateway(settings, tmp / "gw", RADLOOP_LOG_LEVEL="WARNING") as gp:
            gw = Server("gateway", f"{gp.url}/dicomweb", {"Authorization": f"Bearer {token}"})
            g: dict[str, Any] = {}
            tti = {"lowest": "image/jphc", "full_jphc": "image/jphc", "full_octet": "application/octet-stream"}
            g["jphc"] = asyncio.run(measure(gw, study, series, sops, JPHC, first=True, tti=tti,
                                            warm=(warm_series, warm_sops[0])))
            g["octet"] = asyncio.run(measure(gw, study, series, sops, OCTET, first=False))
            g.update(asyncio.run(measure_json(gw, study, series)))
            results["gateway"] = g
        if orthanc_proc is not None:
            orth = Server("orthanc", f"{ourl}/dicom-web", {})
            o: dict[str, Any] = {"octet": asyncio.run(measure(orth, study, series, sops, OCTET, first=True,
                                                               tti={"full_octet": OCTET},
                                                               warm=(warm_series, warm_sops[0])))}
            o.update(asyncio.run(measure_json(orth, study, series)))
            results["orthanc"] = o
            results["ratios"] = ratios(results)
        results["elapsed_s"] = time.monotonic() - t_start
        if results["elapsed_s"] > DEADLINE_S:
            results["note"] = f"took {results['elapsed_s']:.0f} s, over the {DEADLINE_S:.0f} s budget"
    finally:
        if orthanc_proc is not None:
            stop_orthanc(orthanc_proc)
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out = REPO / "bench" / "results" / "stream.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """Orthanc's figure divided by the gateway's (so > 1 means the gateway is faster), or the reverse for rates."""
    g, o = r["gateway"], r["orthanc"]
    oo = o["octet"]
    out: dict[str, float] = {}
    for mt in ("jphc", "octet"):
        gg = g[mt]
        out[f"series_warm_c8_speedup_{mt}"] = oo["series_warm_c8_s"] / gg["series_warm_c8_s"]
        out[f"frame_c1_p50_speedup_{mt}"] = oo["frame_c1_p50_ms"] / gg["frame_c1_p50_ms"]
        out[f"frame_c16_p99_speedup_{mt}"] = oo["frame_c16_p99_ms"] / gg["frame_c16_p99_ms"]
        out[f"frames_per_s_ratio_{mt}"] = gg["frames_per_s_c16"] / oo["frames_per_s_c16"]
    out["series_cold_c8_speedup_jphc"] = oo["series_cold_c8_s"] / g["jphc"]["series_cold_c8_s"]
    out["time_to_first_image_lowest_vs_orthanc_frame"] = (oo["time_to_first_image_full_octet_ms"]
                                                          / g["jphc"]["time_to_first_image_lowest_ms"])
    out["series_metadata_speedup"] = o["series_metadata_ms"] / g["series_metadata_ms"]
    out["series_metadata_first_call_speedup"] = o["series_metadata_first_ms"] / g["series_metadata_first_ms"]
    out["qido_instances_speedup"] = o["qido_instances_ms"] / g["qido_instances_ms"]
    return out


if __name__ == "__main__":
    main()
