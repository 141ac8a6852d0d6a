"""A DynamoDB idempotency store (the design of AWS Powertools' idempotency utility, made async).

Timeline a conditional write protects::

    worker A: put INPROGRESS(key) ──ok──> handler runs ──> put COMPLETED(key, result)
    worker B:      put INPROGRESS(key) ──ConditionalCheckFailed──> read record:
                       COMPLETED  -> return the stored result, no second effect
                       INPROGRESS (live) -> IdempotencyInProgressError (message retried later)
                       INPROGRESS (stale: in-progress expiry passed, e.g. A was SIGKILLed) -> B may take it over

Invariants:
- The first write succeeds only if the key is absent, or its record expired, or it is INPROGRESS and stale.
- If the handler raises, the record is deleted (only if it is still ours), so a retry can run it again.
- A payload hash is stored; the same key with a different payload raises :class:`IdempotencyPayloadMismatchError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from shared.aws import AwsClients
from shared.exceptions import IdempotencyInProgressError, IdempotencyPayloadMismatchError

T = TypeVar("T")

INPROGRESS = "INPROGRESS"
COMPLETED = "COMPLETED"


def payload_hash(payload: Any) -> str:
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        data = payload.encode()
    else:
        data = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


class IdempotencyStore:
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

    def _id(self, key: str) -> str:
        return f"{self.namespace}#{key}" if self.namespace else key

    async def run(self, key: str, payload: Any, handler: Callable[[], Awaitable[T]]) -> tuple[T | Any, bool]:
        """Run ``handler`` at most once for ``key``. Returns ``(result, ran)``; ``ran`` is False for a duplicate."""
        ddb = await self.clients.dynamodb()
        rid = self._id(key)
        phash = payload_hash(payload)
        token = uuid.uuid4().hex
        now = int(time.time())
        try:
            await ddb.put_item(
                TableName=self.table,
                Item={
                    "id": {"S": rid},
                    "status": {"S": INPROGRESS},
                    "payload_hash": {"S": phash},
                    "expiration": {"N": str(now + self.expiry_s)},
                    "in_progress_expiry": {"N": str(now + self.inprogress_expiry_s)},
                    "owner": {"S": token},
                },
                ConditionExpression=(
                    "attribute_not_exists(id) OR expiration < :now OR "
                    "(#s = :inprogress AND in_progress_expiry < :now)"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":now": {"N": str(now)}, ":inprogress": {"S": INPROGRESS}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return await self._existing(ddb, rid, phash), False

        keepalive = asyncio.create_task(self._keep_alive(ddb, rid, token))
        try:
            result = await handler()
        except BaseException:
            keepalive.cancel()
            await self._delete_if_owner(ddb, rid, token)
            raise
        finally:
            keepalive.cancel()
        await ddb.put_item(
            TableName=self.table,
            Item={
                "id": {"S": rid},
                "status": {"S": COMPLETED},
                "payload_hash": {"S": phash},
                "expiration": {"N": str(int(time.time()) + self.expiry_s)},
                "result": {"S": json.dumps(result, default=str)},
            },
        )
        return result, True

    async def _keep_alive(self, ddb: Any, rid: str, token: str) -> None:
        """Push ``in_progress_expiry`` forward while a long handler runs, so its record never looks stale.

        Without this a handler that outlives the in-progress expiry could be run again by a duplicate copy of its
        event (EventBridge delivers at least once) while the first run is still going.
        """
        interval = max(1.0, self.inprogress_expiry_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await ddb.update_item(
                    TableName=self.table,
                    Key={"id": {"S": rid}},
                    UpdateExpression="SET in_progress_expiry = :e",
                    ConditionExpression="#o = :token",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={
                        ":e": {"N": str(int(time.time()) + self.inprogress_expiry_s)},
                        ":token": {"S": token},
                    },
                )
            except ClientError:
                return

    async def _existing(self, ddb: Any, rid: str, phash: str) -> Any:
        resp = await ddb.get_item(TableName=self.table, Key={"id": {"S": rid}}, ConsistentRead=True)
        item = resp.get("Item")
        if item is None:  # deleted between our write and read (the holder failed): let the caller retry
            raise IdempotencyInProgressError(f"idempotency record {rid!r} changed concurrently; retry")
        if item["payload_hash"]["S"] != phash:
            raise IdempotencyPayloadMismatchError(
                f"idempotency key {rid!r} was already used with a different payload"
            )
        if item["status"]["S"] == INPROGRESS:
            raise IdempotencyInProgressError(f"idempotency key {rid!r} is being processed by another worker")
        raw = item.get("result", {}).get("S")
        return json.loads(raw) if raw else None

    async def _delete_if_owner(self, ddb: Any, rid: str, token: str) -> None:
        try:
            await ddb.delete_item(
                TableName=self.table,
                Key={"id": {"S": rid}},
                ConditionExpression="#o = :token",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":token": {"S": token}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
