"""A DynamoDB idempotency store (the design of AWS Powertools' idempotency utility, made async).

Timeline a conditional write protects::

    worker A: put INPROGRESS(key) ──ok──> handler runs ──> put COMPLETED(key, result)
    worker B:      put INPROGRESS(key) ──ConditionalCheckFailed──> read record:
                       COMPLETED  -> return the stored result, no second effect
                       INPROGRESS (live) -> IdempotencyInProgressError (message retried later)
                       INPROGRESS (stale: in-progress expiry passed, e.g. A was SIGKILLed) -> B may take it over

Invariants (the lease protocol of :mod:`shared.lease`, shared with ingestion's claims):
- The first write succeeds only if the key is absent, or its record expired, or it is INPROGRESS and stale.
- If the handler raises, the record is deleted (only if it is still ours), so a retry can run it again.
- A payload hash is stored; the same key with a different payload raises :class:`IdempotencyPayloadMismatchError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shared.aws import AwsClients
from shared.exceptions import ConditionFailedError, IdempotencyInProgressError, IdempotencyPayloadMismatchError
from shared.lease import COMPLETED, INPROGRESS, LeaseTable, LeaseTaken, new_token

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["COMPLETED", "INPROGRESS", "IdempotencyStore", "payload_hash"]


def payload_hash(payload: Any) -> str:
    """SHA-256 of a payload (bytes, text, or JSON with sorted keys)."""
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        data = payload.encode()
    else:
        data = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


class IdempotencyStore:
    """Runs handlers at most once per key (records in the ``idempotency`` table, see the module docstring)."""

    def __init__(
        self,
        clients: AwsClients,
        *,
        table: str | None = None,
        expiry_s: int | None = None,
        inprogress_expiry_s: int | None = None,
        namespace: str = "",
    ) -> None:
        s = clients.settings
        self.clients = clients
        self.table = table or s.topology.table("idempotency")
        self.expiry_s = expiry_s or s.idempotency_expiry_s
        self.inprogress_expiry_s = inprogress_expiry_s or s.idempotency_inprogress_expiry_s
        self.namespace = namespace
        self.leases = LeaseTable(clients.dynamodb, self.table)

    def _id(self, key: str) -> str:
        return f"{self.namespace}#{key}" if self.namespace else key

    async def run(self, key: str, payload: Any, handler: Callable[[], Awaitable[T]]) -> tuple[T | Any, bool]:
        """Run ``handler`` at most once for ``key``. Returns ``(result, ran)``; ``ran`` is False for a duplicate."""
        rid = self._id(key)
        phash = payload_hash(payload)
        token = new_token()
        now = int(time.time())
        try:
            await self.leases.acquire(rid, token, now=now, lease_until=now + self.inprogress_expiry_s,
                                      expires_at=now + self.expiry_s, attrs={"payload_hash": phash})
        except LeaseTaken:
            return await self._existing(rid, phash), False

        keepalive = asyncio.create_task(self._keep_alive(rid, token))
        try:
            result = await handler()
        except BaseException:
            keepalive.cancel()
            await self.leases.release(rid, token)
            raise
        finally:
            keepalive.cancel()
        try:
            await self.leases.complete(rid, token, attrs={"result": json.dumps(result, default=str)},
                                       expires_at=int(time.time()) + self.expiry_s)
        except ConditionFailedError:  # taken over meanwhile (the lease lapsed): the new holder completes it
            log.warning("idempotency record was taken over before completion", extra={"key": rid})
        return result, True

    async def _keep_alive(self, rid: str, token: str) -> None:
        """Push ``in_progress_expiry`` forward while a long handler runs, so its record never looks stale.

        Without this a handler that outlives the in-progress expiry could be run again by a duplicate copy of its
        event (EventBridge delivers at least once) while the first run is still going.
        """
        interval = max(1.0, self.inprogress_expiry_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.leases.renew(rid, token, int(time.time()) + self.inprogress_expiry_s):
                    return
            except Exception:  # a failed beat ends the keep-alive; the lease still runs its course
                return

    async def _existing(self, rid: str, phash: str) -> Any:
        item = await self.leases.get(rid)
        if item is None:  # deleted between our write and read (the holder failed): let the caller retry
            raise IdempotencyInProgressError(f"idempotency record {rid!r} changed concurrently; retry")
        if item.get("payload_hash") != phash:
            raise IdempotencyPayloadMismatchError(
                f"idempotency key {rid!r} was already used with a different payload"
            )
        if item.get("status") == INPROGRESS:
            raise IdempotencyInProgressError(f"idempotency key {rid!r} is being processed by another worker")
        raw = item.get("result")
        return json.loads(raw) if raw else None
