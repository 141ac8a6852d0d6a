"""STOW-RS bounds and durability (issue 15 §3 and §6, issue 16 §3), through the real routes in-process:

- more than ``max_stow_parts`` parts: 413 with a reason (not a task, a worker round trip and an event per part);
- back-pressure: while ``stow_max_inflight_parts`` parts are being processed, the body is not read further;
- the audit record is written before the answer; when it cannot be written nothing is acknowledged (503, 0xA700);
- an instance whose claim is busy (another upload in progress) is "retry later" (503 + Retry-After, 0xA700), not a
  refusal (409).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest

from services.ingestion.adapters.claims import ClaimStore
from services.ingestion.service import IngestResult
from shared.aws import AwsClients
from tests.ingestion.inproc import audit_records, pipeline, stow_client
from tests.ingestion.stow_helpers import fresh, multipart

A700 = 0xA700


def _failed(body: dict) -> list[dict]:  # type: ignore[type-arg]
    return list(body.get("00081198", {}).get("Value", []))


@pytest.mark.asyncio(loop_scope="session")
async def test_part_count_is_capped(adeployment, clients: AwsClients) -> None:
    pipe, pool = pipeline(adeployment, clients, max_stow_parts=5)
    async with stow_client(pipe, pool) as http:
        body, ctype = multipart([b"not dicom"] * 6)
        resp = await http.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 413, resp.text
        assert "more than 5 parts" in resp.json()["detail"]
        # at the cap: processed (each part refused on its own merits), not 413
        body, ctype = multipart([b"not dicom"] * 5)
        resp = await http.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 409 and len(_failed(resp.json())) == 5


@pytest.mark.asyncio(loop_scope="session")
async def test_body_is_not_read_ahead_of_bounded_in_flight_parts(adeployment, clients: AwsClients) -> None:
    pipe, pool = pipeline(adeployment, clients, stow_max_inflight_parts=2)
    gate = asyncio.Event()
    in_flight: list[int] = []

    async def slow_ingest(data: bytes, **_: object) -> IngestResult:
        in_flight.append(1)
        await gate.wait()
        return IngestResult("stored", "1.2.3", "1.2.3.4", f"1.2.3.4.{len(in_flight)}", "1.2.840.10008.5.1.4.1.1.7",
                            "k", 0.0)

    pipe.ingest = slow_ingest  # type: ignore[assignment,method-assign]
    n = 20
    body, ctype = multipart([b"x" * 1000] * n)
    boundary = ctype.split("boundary=")[1].encode()
    pieces = body.split(b"--" + boundary)
    chunks = [pieces[0]] + [b"--" + boundary + p for p in pieces[1:]]  # one chunk per part (and the closing one)
    sent: list[int] = []

    async def stream() -> AsyncIterator[bytes]:
        for c in chunks:
            sent.append(1)
            yield c

    async with stow_client(pipe, pool) as http:
        req = asyncio.create_task(http.post("/dicomweb/studies", content=stream(), headers={"Content-Type": ctype}))
        for _ in range(200):
            if len(in_flight) >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # time for an unbounded reader to run ahead
        assert len(in_flight) == 2
        # the preamble, 2 parts in flight, one parsed and waiting for a slot, the chunk that completed it (and slack
        # for one more read by the server): never the whole body (without back-pressure: all 22 chunks)
        assert len(sent) <= 7, f"{len(sent)} of {len(chunks)} body chunks read while 2 parts were in flight"
        gate.set()
        resp = await asyncio.wait_for(req, 30)
    assert resp.status_code == 200 and len(in_flight) == n and len(sent) == len(chunks)


@pytest.mark.asyncio(loop_scope="session")
async def test_audit_is_durable_before_the_answer(adeployment, clients: AwsClients) -> None:
    pipe, pool = pipeline(adeployment, clients)
    ds, data = fresh("SC_rgb.dcm")
    sop = str(ds.SOPInstanceUID)
    real_table = pipe.rt.audit.table
    async with stow_client(pipe, pool) as http:
        body, ctype = multipart([data])
        pipe.rt.audit.table = f"{adeployment.prefix}-no-such-audit-table"  # the audit write fails for real
        resp = await http.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
        failed = _failed(resp.json())
        assert [(f["00081155"]["Value"][0], f["00081197"]["Value"][0]) for f in failed] == [(sop, A700)]
        assert "00081199" not in resp.json()  # nothing acknowledged
        pipe.rt.audit.table = real_table
        resp = await http.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 200, resp.text
        # the record is there when the answer arrives (no background task to wait for)
        records = [r for r in await audit_records(clients, adeployment) if r["action"] == "store"]
        assert [(r["outcome"], r["count"]) for r in records] == [("success", 1)]
        assert records[0]["subject"] and records[0]["service"] == "ingestion"


@pytest.mark.asyncio(loop_scope="session")
async def test_busy_claim_is_retry_later_not_a_refusal(adeployment, clients: AwsClients) -> None:
    pipe, pool = pipeline(adeployment, clients, claim_wait_s=0.3)
    ds, data = fresh("SC_rgb.dcm")
    sop = str(ds.SOPInstanceUID)
    other = ClaimStore(clients.dynamodb, adeployment.topology.table("idempotency"), lease_s=600)
    held = await other.acquire(sop, hashlib.sha256(data).hexdigest())  # another upload is storing it right now
    async with stow_client(pipe, pool) as http:
        body, ctype = multipart([data])
        resp = await http.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
        failed = _failed(resp.json())
        assert [(f["00081155"]["Value"][0], f["00081197"]["Value"][0]) for f in failed] == [(sop, A700)]
        await other.release(sop, held)  # the other upload failed: the retry stores it
        resp = await http.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 200, resp.text


async def _object_keys(clients: AwsClients, bucket: str, prefix: str) -> list[str]:
    s3 = await clients.s3()
    resp = await s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents", [])]


@pytest.mark.asyncio(loop_scope="session")
async def test_s3_drop_busy_claim_stays_in_imports_for_redelivery(adeployment, clients: AwsClients) -> None:
    from shared.dicom.errors import TransientFailure

    pipe, pool = pipeline(adeployment, clients, claim_wait_s=0.3)
    ds, data = fresh("SC_rgb.dcm")
    sop = str(ds.SOPInstanceUID)
    key = f"imports/{uuid.uuid4().hex}/busy.dcm"
    bucket = pipe.drop.bucket
    s3 = await clients.s3()
    await s3.put_object(Bucket=bucket, Key=key, Body=data)
    other = ClaimStore(clients.dynamodb, adeployment.topology.table("idempotency"), lease_s=600)
    held = await other.acquire(sop, hashlib.sha256(data).hexdigest())
    try:
        with pytest.raises(TransientFailure) as info:  # the handler raises: SQS redelivers the message
            await pipe.ingest_dropped(bucket, key)
        assert info.value.kind == "in-progress-elsewhere"
        assert await _object_keys(clients, bucket, "imports/") == [key]
        assert await _object_keys(clients, bucket, "imports-rejected/") == []
        await other.release(sop, held)
        assert (await pipe.ingest_dropped(bucket, key))["status"] == "stored"  # the redelivery stores it
        assert await _object_keys(clients, bucket, "imports/") == []
    finally:
        await pipe.outbox.stop(timeout_s=1)
        pool.shutdown()


@pytest.mark.asyncio(loop_scope="session")
async def test_s3_drop_import_is_audited_before_the_object_is_deleted(adeployment, clients: AwsClients) -> None:
    from shared.dicom.errors import TransientFailure

    pipe, pool = pipeline(adeployment, clients)
    ds, data = fresh("SC_rgb.dcm")
    bucket = pipe.drop.bucket
    key, bad_key = f"imports/{uuid.uuid4().hex}/a.dcm", f"imports/{uuid.uuid4().hex}/bad.dcm"
    s3 = await clients.s3()
    await s3.put_object(Bucket=bucket, Key=key, Body=data)
    await s3.put_object(Bucket=bucket, Key=bad_key, Body=b"not a DICOM file")
    real_table = pipe.rt.audit.table
    try:
        pipe.rt.audit.table = f"{adeployment.prefix}-no-such-audit-table"
        for k in (key, bad_key):
            with pytest.raises(TransientFailure):
                await pipe.ingest_dropped(bucket, k)
        assert sorted(await _object_keys(clients, bucket, "imports/")) == sorted([key, bad_key])  # both kept
        pipe.rt.audit.table = real_table
        assert (await pipe.ingest_dropped(bucket, key))["status"] in ("stored", "duplicate")
        assert (await pipe.ingest_dropped(bucket, bad_key))["rejected"]
        assert await _object_keys(clients, bucket, "imports/") == []
        records = [r for r in await audit_records(clients, adeployment) if r["action"] == "import"]
        by_outcome = {r["outcome"]: r for r in records}
        assert set(by_outcome) == {"success", "failure"} and len(records) == 2
        assert str(ds.SOPInstanceUID) in by_outcome["success"]["resource"]
        assert "bad.dcm" not in str(records)  # no object key (it may be named after the patient)
    finally:
        await pipe.outbox.stop(timeout_s=1)
        pool.shutdown()
