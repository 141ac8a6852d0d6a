"""Benchmark: STOW-RS ingestion throughput of the real ingestion service against the embedded AWS endpoint.

Corpus: a 300-instance CT series made from the real ``693_UNCR`` (512x512 int16) and 20 chest radiographs made from
``RG1_UNCR`` (1955x1841), each with fresh UIDs, sent one instance per STOW-RS request at concurrency 1, 4 and 16
(fresh UIDs per level, so nothing is a duplicate). Reported per level: instances/s, MB/s, p50/p99 latency.

Measured in the same run, so ratios are meaningful:
- the codec-only bound: HTJ2K encode time per frame (one thread) x frames / cores, as instances/s;
- the embedded endpoint's own ceiling: S3 PUT/s and PutEvents/s at concurrency 16;
- Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``), started on loopback and stopped after, loaded with the same
  corpus over its STOW-RS at the same concurrency levels (skipped with a note when Orthanc is not installed).

Usage: ``python bench/ingest.py [--ct 300] [--cr 20] [--levels 1,4,16] [--no-orthanc]``; writes
``bench/results/ingest.json``. Every phase is bounded in time (``--budget-s`` per level).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from radloop.local.embedded_aws import free_port, start_embedded_aws  # noqa: E402
from shared import htj2k  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from shared.aws import AwsClients  # noqa: E402
from shared.bootstrap import bootstrap_topology  # noqa: E402
from shared.dicom.pixels import iter_frames  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.support.ingestion_service import ingestion_service  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ingest.json"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Corpus:
    """Real files with fresh UIDs, generated per concurrency level."""

    def __init__(self, n_ct: int, n_cr: int) -> None:
        self.ct = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
        self.cr = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
        self.n_ct, self.n_cr = n_ct, n_cr

    def generate(self) -> list[bytes]:
        out: list[bytes] = []
        study, series = generate_uid(), generate_uid()
        for i in range(self.n_ct):
            out.append(self._fresh(self.ct, study, series, i + 1))
        for i in range(self.n_cr):
            out.append(self._fresh(self.cr, generate_uid(), generate_uid(), i + 1))
        return out

    @staticmethod
    def _fresh(ds: pydicom.Dataset, study: str, series: str, number: int) -> bytes:
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


def aws_requests(url: str) -> dict[str, dict[str, float]]:
    """The service's own count of the requests it sent to AWS and their body bytes, per API and operation (its
    ``/metrics``: ``radloop_aws_requests_total``, ``radloop_aws_request_bytes_total``; retries are requests)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = {"radloop_aws_requests_total": "requests",
                     "radloop_aws_request_bytes_total": "bytes"}.get(sample.name)
            if field:
                op = f"{sample.labels.get('api')} {sample.labels.get('operation')}"
                out.setdefault(op, {"requests": 0.0, "bytes": 0.0})[field] += sample.value
    return out


def per_instance(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                 n: int) -> dict[str, dict[str, float]]:
    """Requests and KB per instance for each operation between two readings of :func:`aws_requests`."""
    out: dict[str, dict[str, float]] = {}
    for op, v in sorted(after.items()):
        b = before.get(op, {"requests": 0.0, "bytes": 0.0})
        reqs = v["requests"] - b["requests"]
        if reqs > 0:
            out[op] = {"requests": round(reqs / n, 3), "kb": round((v["bytes"] - b["bytes"]) / n / 1000, 2)}
    out["all"] = {"requests": round(sum(x["requests"] for x in out.values()), 2),
                  "kb": round(sum(x["kb"] for x in out.values()), 1)}
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def codec_bound(corpus: Corpus, repeats: int = 15) -> dict[str, Any]:
    """HTJ2K encode time per frame (one thread, median), and the instances/s the cores could encode at best."""
    out: dict[str, Any] = {}
    total_s = 0.0
    for name, ds, n in (("ct", corpus.ct, corpus.n_ct), ("cr", corpus.cr, corpus.n_cr)):
        frame = next(iter_frames(ds))
        times = []
        for _ in range(repeats if name == "ct" else max(3, repeats // 3)):
            t = time.perf_counter()
            htj2k.encode(frame)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out[f"{name}_encode_ms_per_frame"] = round(med * 1000, 2)
        total_s += med * n
    out["cores"] = cores()
    out["corpus_encode_s_one_core"] = round(total_s, 3)
    out["bound_instances_per_s"] = round((corpus.n_ct + corpus.n_cr) / (total_s / cores()), 1)
    return out


async def endpoint_ceiling(settings: Settings, seconds: float = 3.0, concurrency: int = 16) -> dict[str, Any]:
    """S3 PUT/s (100 KB objects) and PutEvents/s (one entry per call) against the embedded endpoint."""
    body = np.random.default_rng(0).integers(0, 255, 100_000, dtype=np.uint8).tobytes()
    out: dict[str, Any] = {}
    async with AwsClients(settings, max_pool_connections=concurrency * 2) as c:
        s3, events = await c.s3(), await c.events()
        bucket = settings.topology.bucket("images")

        async def run(op: Any) -> float:
            n = 0
            stop = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal n
                while time.perf_counter() < stop:
                    await op()
                    n += 1

            t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return n / (time.perf_counter() - t)

        out["s3_put_per_s"] = round(await run(lambda: s3.put_object(Bucket=bucket, Key=f"bench/{uuid.uuid4().hex}",
                                                                    Body=body)), 1)
        out["put_events_per_s"] = round(await run(lambda: events.put_events(Entries=[{
            "Source": "radloop.bench", "DetailType": "BenchPing", "Detail": "{}",
            "EventBusName": settings.topology.bus_name}])), 1)
    return out


async def purge_subscriber_queues(settings: Settings, max_rounds: int = 200) -> int:
    """Receive and delete what the (absent) subscribers would have consumed; bounded. Returns how many."""
    n = 0
    async with AwsClients(settings) as c:
        sqs = await c.sqs()
        for service in ("triage", "verification"):
            url = (await sqs.get_queue_url(QueueName=settings.topology.queue_for(service).name))["QueueUrl"]
            for _ in range(max_rounds):
                msgs = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)).get(
                    "Messages", [])
                if not msgs:
                    break
                await sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
                n += len(msgs)
    return n


async def stow_load(url: str, path: str, headers: dict[str, str], items: list[bytes], concurrency: int,
                    budget_s: float) -> dict[str, Any]:
    """Send every item as its own STOW-RS request with ``concurrency`` in flight; bounded by ``budget_s``."""
    boundary = "bench-boundary-7d1f"
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    latencies: list[float] = []
    failures: list[str] = []
    sent_bytes = 0
    queue = list(reversed(items))
    deadline = time.perf_counter() + budget_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent_bytes
            while queue and time.perf_counter() < deadline:
                data = queue.pop()
                body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
                        + f"\r\n--{boundary}--\r\n".encode())
                t = time.perf_counter()
                r = await client.post(path, content=body, headers={**headers, "Content-Type": ctype})
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    sent_bytes += len(data)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    ok = len(latencies) - len(failures)
    lat = sorted(latencies) or [0.0]
    return {
        "concurrency": concurrency, "instances": ok, "failed": len(failures), "failures_sample": failures[:3],
        "complete": ok == len(items), "seconds": round(elapsed, 2),
        "instances_per_s": round(ok / elapsed, 2) if elapsed else 0.0,
        "mb_per_s": round(sent_bytes / 1e6 / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(lat[len(lat) // 2] * 1000, 1), "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
    }


class Orthanc:
    """Orthanc with its DICOMweb plugin on loopback, in a temporary directory."""

    PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> str | None:
        if not shutil.which("Orthanc"):
            return "Orthanc is not installed (Debian packages orthanc and orthanc-dicomweb)"
        if not Path(cls.PLUGIN).exists():
            return f"the Orthanc DICOMweb plugin is missing ({cls.PLUGIN})"
        return None

    def __enter__(self) -> Orthanc:
        cfg = {
            "Name": "bench", "StorageDirectory": str(self.dir / "storage"), "IndexDirectory": str(self.dir / "index"),
            "HttpPort": self.port, "DicomPort": free_port(), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpThreadsCount": 50, "Plugins": [self.PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StorageCompression": False,
        }
        (self.dir / "orthanc.json").write_text(json.dumps(cfg))
        log = open(self.dir / "orthanc.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["Orthanc", str(self.dir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"Orthanc did not start; see {self.dir / 'orthanc.log'}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ct", type=int, default=300)
    ap.add_argument("--cr", type=int, default=20)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--budget-s", type=float, default=40.0, help="time bound per level and system")
    ap.add_argument("--no-orthanc", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    corpus = Corpus(args.ct, args.cr)
    result: dict[str, Any] = {"benchmark": "ingest", "corpus": {"ct_693_UNCR": args.ct, "cr_RG1_UNCR": args.cr},
                              "machine": {"cores": cores()}, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime())}
    result["codec_only"] = codec_bound(corpus)
    print(f"codec-only bound: {result['codec_only']}", flush=True)  # noqa: T201
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    emb = start_embedded_aws(log_path=tmp / "moto.log")
    try:
        settings = Settings(aws_endpoint_url=emb.endpoint, prefix=f"bench-{uuid.uuid4().hex[:8]}", var_dir=tmp / "var")

        async def boot() -> None:
            async with AwsClients(settings) as c:
                await bootstrap_topology(c)

        asyncio.run(boot())
        result["endpoint_ceiling"] = asyncio.run(endpoint_ceiling(settings))
        print(f"embedded endpoint: {result['endpoint_ceiling']}", flush=True)  # noqa: T201
        token = mint_token(settings, "pacs")
        ours = []
        with ingestion_service(settings, tmp, env={"RADLOOP_LOG_LEVEL": "WARNING"}) as svc:
            from tests.support.ingestion_service import _children

            for c in levels:
                items = corpus.generate()
                # No subscriber runs here; purge their queues so the event fan-out is not slowed by an ever-deeper
                # backlog (moto's SendMessage slows with queue depth), as it would not be with consumers running.
                asyncio.run(purge_subscriber_queues(settings))
                pids = {"service": svc.process.pid, "embedded_aws": emb.process.pid}
                pids.update({f"worker{i}": p for i, p in enumerate(_children(svc.process.pid))})
                before = {k: cpu_seconds(p) for k, p in pids.items()}
                calls0 = aws_requests(svc.url)
                load0 = os.getloadavg()[0]
                r = asyncio.run(stow_load(svc.url, "/dicomweb/studies", {"Authorization": f"Bearer {token}"}, items,
                                          c, args.budget_s))
                n = max(1, r["instances"])
                used = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
                # What one instance asks of AWS (the same code sends the same requests there), per operation.
                r["aws_per_instance"] = per_instance(calls0, aws_requests(svc.url), n)
                workers = sum(v for k, v in used.items() if k.startswith("worker"))
                # Where the CPU went, per instance: which part bounds the figure on this machine.
                r["cpu_ms_per_instance"] = {"service": round(used["service"] * 1000 / n, 1),
                                            "cpu_pool_workers": round(workers * 1000 / n, 1),
                                            "embedded_aws": round(used["embedded_aws"] * 1000 / n, 1)}
                r["cpu_share_of_machine"] = round(sum(used.values()) / (r["seconds"] * cores()), 3)
                r["load_average_1m"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
                ours.append(r)
                print(f"radloop c={c}: {r}", flush=True)  # noqa: T201
            result["radloop_peak_rss_mib"] = round(svc.peak_rss_kib() / 1024)
            errors = [ln for ln in svc.log().splitlines() if '"level": "ERROR"' in ln]
            if errors:
                result["service_errors_sample"] = [ln[:1500] for ln in errors[:3]]
        result["radloop"] = ours
        bound = result["codec_only"]["bound_instances_per_s"]
        best = max(r["instances_per_s"] for r in ours)
        result["radloop_best_share_of_codec_bound"] = round(best / bound, 3) if bound else None
        why = None if not args.no_orthanc else "skipped with --no-orthanc"
        why = why or Orthanc.available()
        if why:
            result["orthanc"] = {"skipped": why}
        else:
            orth = []
            with Orthanc() as o:
                for c in levels:
                    items = corpus.generate()
                    r = asyncio.run(stow_load(o.url, "/dicom-web/studies", {}, items, c, args.budget_s))
                    orth.append(r)
                    print(f"orthanc c={c}: {r}", flush=True)  # noqa: T201
            result["orthanc"] = orth
            ratios = {}
            for a, b in zip(ours, orth, strict=True):
                if b["instances_per_s"]:
                    ratios[str(a["concurrency"])] = round(a["instances_per_s"] / b["instances_per_s"], 3)
            result["ratio_radloop_to_orthanc"] = ratios
    finally:
        emb.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")  # noqa: T201


if __name__ == "__main__":
    main()
