"""Store generated instances exactly as ingestion does, and run the real gateway process over them.

:func:`store_instances` runs ingestion's own CPU half (``prepare``: parse, HTJ2K RPCL transcode, DICOM JSON, index
record) and then writes what ingestion's pipeline writes: the original to ``original_key``, every frame to
``frame_key`` (n from 1), the DICOM JSON to ``metadata_key`` (images bucket), and the index items with
:func:`shared.index_writer.write_instance`. The gateway then serves them like anything received over STOW-RS.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from radloop.local.embedded_aws import free_port
from services.ingestion.domain.prepare import Prepared, PrepareOptions, prepare
from shared.aws import AwsClients
from shared.dicom.parse import ParseLimits
from shared.index_writer import encode_item, write_instance
from shared.instance_index import instance_sk, now_iso, series_sk, study_pk
from shared.settings import Settings
from shared.storage import frame_key

REPO = Path(__file__).resolve().parents[2]


def prepare_all(blobs: Iterable[bytes], pseudonym_key: str = "viewer-tests") -> list[Prepared]:
    """Ingestion's prepare step on each Part 10 blob."""
    opts = PrepareOptions(limits=ParseLimits(), pseudonym_key=pseudonym_key)
    return [prepare(b, opts) for b in blobs]


def _code_hash() -> str:
    """Hash of the code that decides the stored bytes, so a cached phantom is rebuilt when any of it changes."""
    h = hashlib.sha256()
    for rel in ("tests/viewer/phantom.py", "services/ingestion/domain/prepare.py", "shared/dicom/pixels.py",
                "shared/dicom/dicomjson.py", "shared/htj2k.py", "shared/instance_index.py", "shared/index_writer.py"):
        h.update((REPO / rel).read_bytes())
    return h.hexdigest()[:16]


def prepared_phantom(n: int, cache_dir: Path | None = None) -> list[Prepared]:
    """The n-slice phantom through ingestion's prepare step, cached under var/cache (about 20 s to build)."""
    from tests.viewer.phantom import make_ct_series, to_bytes

    cache_dir = cache_dir or REPO / "var" / "cache"
    path = cache_dir / f"viewer-phantom-{n}-{_code_hash()}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301 - our own cache file
    prepared = prepare_all(to_bytes(ds) for ds in make_ct_series(n))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(prepared, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return prepared


async def store_instances(settings: Settings, prepared: list[Prepared], *, concurrency: int = 32) -> None:
    """Write originals, frames, metadata and index items for each prepared instance (see the module docstring)."""
    bucket = settings.topology.bucket("images")
    table = settings.topology.table("instances")
    gate = asyncio.Semaphore(concurrency)
    async with AwsClients(settings) as clients:
        s3 = await clients.s3()
        ddb = await clients.dynamodb()

        async def put(key: str, body: bytes, content_type: str) -> None:
            async with gate:
                await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

        async def objects(p: Prepared) -> None:
            await asyncio.gather(
                put(p.original_key, p.stored_bytes, "application/dicom"),
                put(p.metadata_key, p.dicom_json.encode(), "application/dicom+json"),
                *(put(frame_key(p.study_uid, p.series_uid, p.sop_uid, n), cs, "image/jphc")
                  for n, cs in enumerate(p.frames, start=1)),
            )

        # Objects first, index last (as ingestion: an index item never points at missing objects).
        await asyncio.gather(*(objects(p) for p in prepared))
        await index_series(ddb, table, prepared)


async def index_series(ddb: object, table: str, prepared: list[Prepared]) -> None:
    """Index the instances of one series with the items ingestion writes.

    The first instance goes through :func:`write_instance` (it creates the study and series items). One
    transaction per further instance takes minutes on the embedded endpoint for a 300-slice series, so the rest
    are written as the same instance items in batches, and the study and series counters are then raised by their
    number in one update each: the resulting items are those that 300 ``write_instance`` calls leave behind.
    """
    first, rest = prepared[0], prepared[1:]
    if any((p.study_uid, p.series_uid, p.modality) != (first.study_uid, first.series_uid, first.modality) for p in rest):
        raise ValueError("index_series takes the instances of one series")
    await write_instance(ddb, table, first.record)
    if not rest:
        return
    pk = study_pk(first.study_uid)
    items = [encode_item(dict(p.record.instance, pk=pk, sk=instance_sk(p.series_uid, p.sop_uid))) for p in rest]
    for i in range(0, len(items), 25):
        pending = [{"PutRequest": {"Item": it}} for it in items[i : i + 25]]
        for _ in range(20):  # bounded retries of unprocessed items
            resp = await ddb.batch_write_item(RequestItems={table: pending})  # type: ignore[attr-defined]
            pending = resp.get("UnprocessedItems", {}).get(table, [])
            if not pending:
                break
            await asyncio.sleep(0.05)
        if pending:
            raise RuntimeError(f"{len(pending)} index items stayed unprocessed")
    n = {":n": {"N": str(len(rest))}, ":now": {"S": now_iso()}}
    await ddb.update_item(TableName=table, Key={"pk": {"S": pk}, "sk": {"S": series_sk(first.series_uid)}},  # type: ignore[attr-defined]
                          UpdateExpression="ADD num_instances :n", ExpressionAttributeValues={":n": n[":n"]})
    await ddb.update_item(TableName=table, Key={"pk": {"S": pk}, "sk": {"S": "STUDY"}},  # type: ignore[attr-defined]
                          UpdateExpression="SET updated_at = :now ADD num_instances :n", ExpressionAttributeValues=n)


@dataclass
class GatewayProcess:
    """A running ``python -m services.streaming_gateway`` on a free loopback port."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_gateway(settings: Settings, log_path: Path, *, viewer_dist: Path | None = None,
                  timeout_s: float = 60.0, env_extra: dict[str, str] | None = None) -> GatewayProcess:
    """Start the gateway against ``settings``' deployment (``env_extra``: more of its settings) and wait (bounded)
    until /readyz answers 200."""
    port = free_port()
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO),
        "AWS_ENDPOINT_URL": str(settings.aws_endpoint_url),
        "RADLOOP_AWS_ENDPOINT_URL": str(settings.aws_endpoint_url),
        "RADLOOP_PREFIX": settings.prefix,
        "RADLOOP_PORT": str(port),
        "RADLOOP_VAR_DIR": str(settings.var_dir),
        "RADLOOP_VIEWER_DIST": str(viewer_dist or REPO / "viewer" / "dist"),
        **(env_extra or {}),
    })
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.streaming_gateway"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    gw = GatewayProcess(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{gw.base_url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return gw
        except OSError:
            pass
        time.sleep(0.25)
    gw.stop()
    raise RuntimeError(f"the gateway did not become ready within {timeout_s} s; see {log_path}")
