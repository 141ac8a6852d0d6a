"""DICOMweb side by side: radloop (through the local entry point and directly at the gateway) against Orthanc 1.10 +
DICOMweb plugin, same corpus, same client, same run. The rows of issue 20's table.

Corpus (as bench/stream.py): CT slices made from the real ``693_UNCR`` (512x512 int16, each slice offset so frames
differ) and CR images from the real ``RG1_UNCR`` (1955x1841). Both servers get every instance through STOW-RS, and
those uploads are the STOW rows:

- STOW-RS, 1 instance per request, concurrency 16: the read series (300 CT slices; ``--quick``: 24);
- STOW-RS, 10 instances per request, concurrency 4: another CT series (100; ``--quick``: 20), then the CR study
  (20; ``--quick``: 2), untimed.

Then, for radloop through the entry (nginx, ``radloop up``'s) and directly at the gateway, and for Orthanc, taking
turns over ``--rounds`` rounds (each figure the median over them, so load changes hit every side alike):

- QIDO studies by PatientID, series in a study, instances in the read series (median of 5 after a first call);
- WADO series metadata of the read series (same);
- frames at concurrency 16 (every frame of the read series twice, warm: a first pass fills both servers' caches):
  frames/s and p50/p99, as uncompressed pixels (``application/octet-stream``, what Orthanc serves) and, for radloop,
  as the stored HTJ2K (``image/jphc``);
- the whole read series at concurrency 8 (warm), frames/s;
- rendered JPEG of a 512x512 CT frame (median over distinct instances, concurrency 1), first request (rendered) and
  the same request again (radloop: its rendered cache).

The machine's load is recorded: load average before and after, the share of the machine's CPU that was busy during
the run (``/proc/stat``), and the CPU seconds each side's processes used (radloop: gateway, ingestion and its codec
workers, entry; Orthanc) in the STOW phase and in the reads through the entry. Results:
``bench/results/dicomweb.json`` (``--out`` elsewhere). Ratios, under ``ratios``: ``*_x_orthanc_time`` is radloop's
time as a multiple of Orthanc's (< 1: radloop faster), ``*_x_orthanc_rate`` radloop's throughput as a multiple of
Orthanc's (> 1: radloop faster).
Usage: ``python bench/dicomweb.py [--quick] [--no-orthanc] [--out PATH]``.
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
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom.uid import generate_uid  # noqa: E402

from bench.stream import corpus as ct_corpus  # noqa: E402
from bench.stream import pct, start_orthanc, stop_orthanc, timed_batch  # noqa: E402
from radloop.local.embedded_aws import free_port, start_embedded_aws  # noqa: E402
from radloop.local.platform import LocalPlatform  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from shared.settings import DEFAULT_PORTS, Settings  # noqa: E402
from tests.streaming_gateway.store import load_testdata, make_dicom  # noqa: E402

OCTET = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
JPHC = 'multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202'
JSON = "application/dicom+json"
PATIENT = "BENCHDW"
SERVICES = ("ingestion", "streaming_gateway")


def cr_corpus(n: int, study: str) -> list[bytes]:
    cr = load_testdata("RG1_UNCR.dcm")
    series = generate_uid()
    return [make_dicom(cr, study=study, series=series, sop=generate_uid(), patient_name="BENCH^CR",
                       patient_id=PATIENT, study_date="20240102", accession="B2", modality="CR", instance_number=k + 1)
            for k in range(n)]


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), f) for f in files]
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode(), \
        f'multipart/related; type="application/dicom"; boundary={boundary}'


async def stow(root: str, headers: dict[str, str], files: list[bytes], per_request: int, concurrency: int
               ) -> dict[str, Any]:
    """STOW-RS every file, ``per_request`` instances per request, ``concurrency`` requests at a time."""
    batches = [files[i:i + per_request] for i in range(0, len(files), per_request)]
    lat: list[float] = []
    failed = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        sem = asyncio.Semaphore(concurrency)

        async def one(batch: list[bytes]) -> None:
            nonlocal failed
            body, ctype = multipart(batch)
            async with sem:
                t = time.perf_counter()
                async with s.post(f"{root}/studies", data=body,
                                  headers={**headers, "Content-Type": ctype, "Accept": JSON}) as r:
                    await r.read()
                    if r.status != 200:
                        failed += 1
                lat.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in batches))
        wall = time.perf_counter() - t0
    return {"instances": len(files), "per_request": per_request, "concurrency": concurrency, "wall_s": wall,
            "instances_per_s": len(files) / wall, "request_p50_ms": pct(lat, 50), "failed_requests": failed}


async def timed_get(s: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int = 6) -> dict[str, Any]:
    times, body, status = [], b"", 0
    for _ in range(n):
        t = time.perf_counter()
        async with s.get(url, headers=headers) as r:
            body, status = await r.read(), r.status
        times.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise RuntimeError(f"GET {url} -> {status}: {body[:200]!r}")
    out: dict[str, Any] = {"first_ms": times[0], "ms": statistics.median(times[1:] or times)}
    if headers.get("Accept") == JSON:
        out["results"] = len(json.loads(body))
    return out


async def reads(root: str, auth: dict[str, str], ids: dict[str, Any], *, jphc: bool, rendered_n: int,
                warm: bool, quality: int = 90) -> dict[str, Any]:
    study, series, sops = ids["study"], ids["series"], ids["sops"]
    frame = f"{root}/studies/{study}/series/{series}/instances/{{}}/frames/1"
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
        h = {**auth, "Accept": JSON}
        out["qido_studies_by_patient"] = await timed_get(s, f"{root}/studies?PatientID={PATIENT}", h)
        out["qido_series_in_study"] = await timed_get(s, f"{root}/studies/{study}/series", h)
        out["qido_instances_in_series"] = await timed_get(s, f"{root}/studies/{study}/series/{series}/instances", h)
        out["series_metadata"] = await timed_get(s, f"{root}/studies/{study}/series/{series}/metadata", h)
        urls = [frame.format(sop) for sop in sops]
        for label, accept in (("octet", OCTET), *((("jphc", JPHC),) if jphc else ())):
            fh = {**auth, "Accept": accept}
            if warm:  # the first pass fills caches (both servers have them)
                await timed_batch(s, urls, fh, 8)
            wall, _, _ = await timed_batch(s, urls, fh, 8)
            series_fps = len(urls) / wall
            wall, lat, nbytes = await timed_batch(s, urls + urls, fh, 16)
            out[f"frames_{label}"] = {"frames_per_s_c16": len(lat) / wall, "p50_ms_c16": pct(lat, 50),
                                      "p99_ms_c16": pct(lat, 99), "bytes_per_frame": nbytes / len(lat),
                                      "series_c8_frames_per_s": series_fps}
        rh = {**auth, "Accept": "image/jpeg"}
        # A JPEG quality of its own per side and round (both servers honour it): every first request renders, so
        # radloop's rendered cache cannot answer it; the repeat of the same URLs is what a cache is for.
        rurl = f"{root}/studies/{study}/series/{series}/instances/{{}}/rendered?quality={quality}"
        await timed_get(s, rurl.format(sops[-1]), rh, n=1)
        for label in ("rendered_jpeg_512", "rendered_jpeg_512_repeat"):
            times = []
            for sop in sops[:rendered_n]:
                t = time.perf_counter()
                async with s.get(rurl.format(sop), headers=rh) as r:
                    body = await r.read()
                    if r.status != 200 or not body.startswith(b"\xff\xd8"):
                        raise RuntimeError(f"rendered {r.status} {r.headers.get('content-type')}: {body[:100]!r}")
                times.append((time.perf_counter() - t) * 1000)
            out[label] = {"ms": statistics.median(times), "n": len(times), "bytes": len(body)}
    return out


def median_merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' results with each number replaced by its median over the rounds (same shape)."""
    out: dict[str, Any] = {}
    for k, v in rounds[0].items():
        if isinstance(v, dict):
            out[k] = median_merge([r[k] for r in rounds])
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in rounds)
        else:
            out[k] = v
    return out


class CpuMeter:
    """Machine-wide busy share (/proc/stat) and CPU seconds of chosen process trees between start and stop."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.stat0 = self._stat()
        self.load0 = os.getloadavg()

    @staticmethod
    def _stat() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = f[3] + f[4]
        return sum(f) - idle, sum(f)

    def stop(self) -> dict[str, Any]:
        b1, t1 = self._stat()
        b0, t0 = self.stat0
        return {"load_average_before": self.load0, "load_average_after": os.getloadavg(),
                "machine_busy_share": (b1 - b0) / max(1, t1 - t0), "cpus": os.cpu_count(),
                "seconds": time.monotonic() - self.t0}


def tree_cpu_s(pids: list[int]) -> float:
    """User+system CPU seconds of these processes and their live descendants (children's reaped time included)."""
    import psutil

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                f = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
            except (OSError, IndexError):
                pass
    return total


def wait_indexed(url: str, headers: dict[str, str], expected: int, timeout_s: float = 120.0) -> int:
    import httpx

    deadline, n = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, headers={**headers, "Accept": JSON}, timeout=30)
        except httpx.HTTPError:  # not listening yet
            time.sleep(0.5)
            continue
        n = len(r.json()) if r.status_code == 200 and r.content else 0
        if n >= expected:
            return n
        time.sleep(0.5)
    raise RuntimeError(f"{url}: {n} of {expected} instances after {timeout_s:.0f} s")


def ratios(r: dict[str, Any]) -> dict[str, float]:
    o, out = r["orthanc"], {}
    for side in ("radloop_entry", "radloop_gateway"):
        g = r[side]
        for key in ("qido_studies_by_patient", "qido_series_in_study", "qido_instances_in_series", "series_metadata",
                    "rendered_jpeg_512", "rendered_jpeg_512_repeat"):
            out[f"{side}.{key}_x_orthanc_time"] = g[key]["ms"] / o[key]["ms"]
        for mt in ("octet", "jphc"):
            if f"frames_{mt}" in g:
                out[f"{side}.frames_{mt}_c16_x_orthanc_rate"] = (g[f"frames_{mt}"]["frames_per_s_c16"]
                                                                 / o["frames_octet"]["frames_per_s_c16"])
                out[f"{side}.series_{mt}_c8_x_orthanc_rate"] = (g[f"frames_{mt}"]["series_c8_frames_per_s"]
                                                                / o["frames_octet"]["series_c8_frames_per_s"])
    for k in ("stow_1_per_request_c16", "stow_10_per_request_c4"):
        out[f"radloop_entry.{k}_x_orthanc_rate"] = (r["radloop_entry"][k]["instances_per_s"]
                                                    / o[k]["instances_per_s"])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small corpus (the smoke test's): 24+20 CT, 2 CR")
    ap.add_argument("--no-orthanc", action="store_true", help="radloop only")
    ap.add_argument("--read", type=int, help="CT slices in the read series (default 300, --quick 24)")
    ap.add_argument("--stow10", type=int, help="CT slices stored 10 per request (default 100, --quick 20)")
    ap.add_argument("--cr", type=int, help="CR images (default 20, --quick 2)")
    ap.add_argument("--with-python-entry", action="store_true",
                    help="also read through the Python fallback entry (radloop/local/proxy.py) on another port")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of reads, sides in turn (default 3, --quick 1)")
    ap.add_argument("--gateway-replicas", type=int, default=min(4, os.cpu_count() or 1),
                    help="streaming gateway processes behind the entry (RADLOOP_LOCAL_GATEWAY_REPLICAS; default: one "
                         "per CPU, at most 4). The gateway-direct figures are the first replica's alone")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dicomweb.json")
    args = ap.parse_args(argv)
    n_read, n_stow10, n_cr, n_rendered = (24, 20, 2, 8) if args.quick else (300, 100, 20, 30)
    n_read, n_stow10, n_cr = args.read or n_read, args.stow10 or n_stow10, args.cr or n_cr
    n_rendered = min(n_rendered, n_read)
    args.rounds = args.rounds or (1 if args.quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    results: dict[str, Any] = {
        "corpus": {"read_series_ct": n_read, "stow10_series_ct": n_stow10, "cr": n_cr,
                   "ct_frame": "512x512 int16 (693_UNCR)", "cr_image": "1955x1841 (RG1_UNCR)"},
        "machine": f"{os.cpu_count()} CPUs shared with other work; client and servers on the same host",
    }
    t = time.monotonic()
    study = generate_uid()
    _, read_series, read_sops, read_files = ct_corpus(n_read, study)
    _, _, _, stow10_files = ct_corpus(n_stow10, study)
    cr_files = cr_corpus(n_cr, generate_uid())
    results["corpus"]["build_s"] = time.monotonic() - t
    ids = {"study": study, "series": read_series, "sops": read_sops}
    results["corpus"]["instances_stored"] = n_read + n_stow10 + n_cr
    moto = start_embedded_aws(free_port(), log_path=tmp / "moto.log")
    orthanc_proc, ourl = None, ""
    plat: LocalPlatform | None = None
    py_entry: subprocess.Popen[bytes] | None = None
    try:
        settings = Settings(aws_endpoint_url=moto.endpoint, prefix=f"benchdw-{os.getpid()}", var_dir=tmp / "var",
                            aws_max_attempts=3, local_gateway_replicas=args.gateway_replicas)
        results["gateway_replicas"] = args.gateway_replicas
        ports = {name: free_port() for name in DEFAULT_PORTS}
        plat = LocalPlatform(settings=settings, ports=ports, services=SERVICES,
                             extra_env={"RADLOOP_LOG_LEVEL": "WARNING"})
        plat.start()
        plat.wait_healthy(timeout_s=180)
        entry_log = (plat.run_dir / "entry.log").read_text(errors="replace")
        results["entry"] = "python fallback" if "Python proxy" in entry_log else "nginx"
        if not args.no_orthanc and shutil.which("Orthanc"):
            orthanc_proc, ourl = start_orthanc(tmp)
        token = mint_token(settings, "admin")
        auth = {"Authorization": f"Bearer {token}"}
        sides: dict[str, tuple[str, dict[str, str], list[int]]] = {
            "radloop_entry": (f"{plat.entry_url}/dicomweb", auth,
                              [p.pid for p in plat.processes.values() if p.pid is not None]),
        }
        if orthanc_proc is not None:
            sides["orthanc"] = (f"{ourl}/dicom-web", {}, [orthanc_proc.pid])
        meter = CpuMeter()
        for name, (root, h, pids) in sides.items():
            side: dict[str, Any] = {}
            cpu0 = tree_cpu_s(pids)
            side["stow_1_per_request_c16"] = asyncio.run(stow(root, h, read_files, 1, 16))
            side["stow_10_per_request_c4"] = asyncio.run(stow(root, h, stow10_files, 10, 4))
            side["stow_ct_cpu_s_per_instance"] = (tree_cpu_s(pids) - cpu0) / (n_read + n_stow10)
            asyncio.run(stow(root, h, cr_files, 10, 4))
            results[name] = side
        del read_files, stow10_files, cr_files
        for root, h, _pids in sides.values():
            wait_indexed(f"{root}/studies/{study}/series/{read_series}/instances", h, n_read)
        results["radloop_gateway"] = {}
        sides["radloop_gateway"] = (f"{plat.url('streaming_gateway')}/dicomweb", auth, [])
        if args.with_python_entry:  # the entry this replaced, same routes, for the same reads in the same rounds
            py_port = free_port()
            py_entry = subprocess.Popen(
                [sys.executable, "-m", "radloop.local.entry"],
                env=dict(plat.child_env(), RADLOOP_ENTRY="python", RADLOOP_PORT=str(py_port)),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            wait_indexed(f"http://127.0.0.1:{py_port}/dicomweb/studies/{study}/series/{read_series}/instances", auth,
                         n_read, timeout_s=60)
            results["radloop_python_entry"] = {}
            sides["radloop_python_entry"] = (f"http://127.0.0.1:{py_port}/dicomweb", auth, [py_entry.pid])
        # The sides take turns, round after round, so that a change in the machine's load hits each alike; each
        # figure is the median over the rounds.
        read_sides = [n for n in ("radloop_entry", "radloop_gateway", "radloop_python_entry", "orthanc") if n in sides]
        per_round: dict[str, list[dict[str, Any]]] = {n: [] for n in read_sides}
        cpu = dict.fromkeys(read_sides, 0.0)
        for rnd in range(args.rounds):
            for name in read_sides:
                root, h, pids = sides[name]
                cpu0 = tree_cpu_s(pids)
                quality = 90 - (rnd * len(read_sides) + read_sides.index(name)) % 40  # distinct per side and round
                per_round[name].append(asyncio.run(reads(root, h, ids, jphc=name != "orthanc",
                                                         rendered_n=n_rendered, warm=rnd == 0, quality=quality)))
                cpu[name] += tree_cpu_s(pids) - cpu0
        for name in read_sides:
            results[name].update(median_merge(per_round[name]))
            results[name]["read_rounds"] = args.rounds
            if sides[name][2]:
                results[name]["reads_cpu_s"] = cpu[name]
        results["load"] = meter.stop()
        if "orthanc" in results:
            results["ratios"] = ratios(results)
    finally:
        if py_entry is not None:
            py_entry.terminate()
            py_entry.wait(10)
        if plat is not None:
            plat.stop()
        if orthanc_proc is not None:
            stop_orthanc(orthanc_proc)
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
