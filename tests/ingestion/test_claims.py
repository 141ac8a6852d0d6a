"""Ingestion claims on the shared lease protocol (shared/lease.py), against a real moto server.

The claims and the idempotency store write the same record shape (``status``, ``owner``, ``in_progress_expiry``) on
the same table, and a holder that lost its lease can neither complete nor delete the new holder's record.
"""

from __future__ import annotations

import asyncio

import pytest

from services.ingestion.adapters.claims import ClaimStore
from shared.aws import AwsClients
from shared.dicom.errors import DUPLICATE_SOP_INSTANCE, OUT_OF_RESOURCES, DicomRejection, TransientFailure
from shared.exceptions import ConditionFailedError
from shared.idempotency import IdempotencyStore
from shared.uids import generate_uid

SHA_A, SHA_B = "a" * 64, "b" * 64


def _store(clients: AwsClients, **kw: float) -> ClaimStore:
    return ClaimStore(clients.dynamodb, clients.settings.topology.table("idempotency"), **kw)


async def _record(clients: AwsClients, rid: str) -> dict[str, dict[str, str]]:
    ddb = await clients.dynamodb()
    resp = await ddb.get_item(TableName=clients.settings.topology.table("idempotency"), Key={"id": {"S": rid}},
                              ConsistentRead=True)
    return resp.get("Item", {})


@pytest.mark.asyncio(loop_scope="session")
async def test_claim_lifecycle_duplicate_and_conflict(adeployment, clients: AwsClients) -> None:
    store, sop = _store(clients, wait_s=0.3), generate_uid()
    claim = await store.acquire(sop, SHA_A)
    assert claim.outcome == "owner"
    item = await _record(clients, f"ingest#sop#{sop}")
    assert item["status"]["S"] == "INPROGRESS" and item["owner"]["S"] == claim.token and "in_progress_expiry" in item
    # A concurrent sender of the same bytes waits (bounded), then is told to retry: 0xA700, transient (not refused).
    with pytest.raises(TransientFailure) as busy:
        await store.acquire(sop, SHA_A)
    assert busy.value.failure_reason == OUT_OF_RESOURCES and busy.value.kind == "in-progress-elsewhere"
    await store.complete(sop, claim)
    done = await _record(clients, f"ingest#sop#{sop}")
    assert done["status"]["S"] == "COMPLETED" and "in_progress_expiry" not in done
    assert (await store.acquire(sop, SHA_A)).outcome == "duplicate"
    with pytest.raises(DicomRejection) as conflict:
        await store.acquire(sop, SHA_B)
    assert conflict.value.failure_reason == DUPLICATE_SOP_INSTANCE


@pytest.mark.asyncio(loop_scope="session")
async def test_stale_claim_is_taken_over_only_for_the_same_content(adeployment, clients: AwsClients) -> None:
    store, sop = _store(clients, lease_s=0.05, wait_s=0.3), generate_uid()
    dead = await store.acquire(sop, SHA_A)  # its holder "dies": nobody completes or renews it
    await asyncio.sleep(0.2)
    # Other content never takes over an INPROGRESS claim, stale or not.
    with pytest.raises(DicomRejection):
        await store.acquire(sop, SHA_B)
    new = await store.acquire(sop, SHA_A)
    assert new.outcome == "owner" and new.token != dead.token
    # The old holder lost it: it cannot complete it, and its release leaves the new holder's record alone.
    assert not await store.holds(sop, dead)
    with pytest.raises(ConditionFailedError):
        await store.complete(sop, dead)
    await store.release(sop, dead)
    assert await store.holds(sop, new)
    await store.release(sop, new)
    assert await _record(clients, f"ingest#sop#{sop}") == {}


@pytest.mark.asyncio(loop_scope="session")
async def test_idempotency_records_use_the_same_lease_shape(adeployment, clients: AwsClients) -> None:
    store = IdempotencyStore(clients)
    key = f"test:{generate_uid()}"
    seen: dict[str, dict[str, dict[str, str]]] = {}

    async def handler() -> dict[str, int]:
        seen["during"] = await _record(clients, key)
        return {"n": 1}

    assert await store.run(key, {"x": 1}, handler) == ({"n": 1}, True)
    during, after = seen["during"], await _record(clients, key)
    assert during["status"]["S"] == "INPROGRESS" and {"owner", "in_progress_expiry", "expiration"} <= set(during)
    assert after["status"]["S"] == "COMPLETED" and "in_progress_expiry" not in after
    assert await store.run(key, {"x": 1}, handler) == ({"n": 1}, False)
