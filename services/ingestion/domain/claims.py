"""Per-instance claims: the idempotency of ingestion, keyed by SOP Instance UID plus content hash.

A claim is an item ``ingest#sop#{sop}`` in the idempotency table (no expiry) with the content hash, a status and an
owner token::

    sender A: put INPROGRESS(sop, sha) ──ok──> store, index, publish ──> COMPLETED
    sender B (same sop, same sha): claim taken -> COMPLETED: acknowledged as a duplicate (no copy, no event)
                                               INPROGRESS: wait for A (bounded), then the same
    sender C (same sop, other sha): 0x0111 duplicate SOP instance, unless overwrite is configured

An owner that fails releases its claim. An owner that dies leaves an INPROGRESS claim whose lease expires, after
which the next sender takes it over and completes the work (every step is idempotent: S3 PUTs of the same bytes, an
index write that recognises the same content hash, an event with a deterministic id).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import ClientError

from shared.dicom.errors import DUPLICATE_SOP_INSTANCE, OUT_OF_RESOURCES, DicomRejection

INPROGRESS, COMPLETED = "INPROGRESS", "COMPLETED"


@dataclass
class Claim:
    outcome: Literal["owner", "duplicate"]
    token: str
    replacing: bool = False


class ClaimStore:
    def __init__(self, ddb_factory: Any, table: str, *, lease_s: float = 120.0, wait_s: float = 60.0) -> None:
        self._ddb = ddb_factory
        self.table = table
        self.lease_s = lease_s
        self.wait_s = wait_s

    @staticmethod
    def _id(sop: str) -> str:
        return f"ingest#sop#{sop}"

    async def acquire(self, sop: str, sha: str, *, overwrite: bool = False) -> Claim:
        """Own the claim for (sop, sha), or learn it is a completed duplicate; raise 0x0111 on a conflict."""
        ddb = await self._ddb()
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        while True:
            now = time.time()
            try:
                await ddb.put_item(
                    TableName=self.table,
                    Item={"id": {"S": self._id(sop)}, "status": {"S": INPROGRESS}, "sha": {"S": sha},
                          "owner": {"S": token}, "lease_until": {"N": f"{now + self.lease_s:.3f}"}},
                    ConditionExpression="attribute_not_exists(id) OR (#s = :ip AND lease_until < :now AND sha = :sha)",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":ip": {"S": INPROGRESS}, ":now": {"N": f"{now:.3f}"},
                                               ":sha": {"S": sha}},
                )
                return Claim("owner", token)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
            item = (await ddb.get_item(TableName=self.table, Key={"id": {"S": self._id(sop)}},
                                       ConsistentRead=True)).get("Item")
            if item is not None:
                status, other = item["status"]["S"], item["sha"]["S"]
                if other != sha:
                    if overwrite and status == COMPLETED and await self._take_over(ddb, sop, sha, other, token):
                        return Claim("owner", token, replacing=True)
                    if not overwrite or status == COMPLETED:
                        raise DicomRejection(
                            DUPLICATE_SOP_INSTANCE,
                            f"SOP Instance UID {sop} is already stored with different content (sha256 {other[:16]}...); "
                            f"this payload (sha256 {sha[:16]}...) was refused.", kind="conflicting-payload", sop_uid=sop)
                elif status == COMPLETED:
                    return Claim("duplicate", token)
            if time.monotonic() > deadline:
                raise DicomRejection(OUT_OF_RESOURCES, f"Another upload of SOP instance {sop} is still being processed; "
                                     "retry later.", kind="in-progress-elsewhere", sop_uid=sop)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def _take_over(self, ddb: Any, sop: str, sha: str, old_sha: str, token: str) -> bool:
        try:
            await ddb.put_item(
                TableName=self.table,
                Item={"id": {"S": self._id(sop)}, "status": {"S": INPROGRESS}, "sha": {"S": sha},
                      "owner": {"S": token}, "lease_until": {"N": f"{time.time() + self.lease_s:.3f}"}},
                ConditionExpression="#s = :done AND sha = :old",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":done": {"S": COMPLETED}, ":old": {"S": old_sha}},
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False

    def complete_item(self, sop: str, claim: Claim) -> dict[str, Any]:
        """The claim completion as an ``Update`` for a transaction (only if the claim is still ours)."""
        return {"Update": {
            "TableName": self.table, "Key": {"id": {"S": self._id(sop)}},
            "UpdateExpression": "SET #s = :done REMOVE lease_until", "ConditionExpression": "#o = :t",
            "ExpressionAttributeNames": {"#s": "status", "#o": "owner"},
            "ExpressionAttributeValues": {":done": {"S": COMPLETED}, ":t": {"S": claim.token}},
        }}

    async def complete(self, sop: str, claim: Claim) -> None:
        ddb = await self._ddb()
        await ddb.update_item(**self.complete_item(sop, claim)["Update"])  # one expression, alone or in a transaction

    async def holds(self, sop: str, claim: Claim) -> bool:
        """Whether the claim is still ours (a consistent read)."""
        ddb = await self._ddb()
        item = (await ddb.get_item(TableName=self.table, Key={"id": {"S": self._id(sop)}},
                                   ConsistentRead=True)).get("Item")
        return item is not None and item.get("owner", {}).get("S") == claim.token

    async def release(self, sop: str, claim: Claim) -> None:
        """Give up an owned claim after a failure, so a retry can run (only if it is still ours)."""
        ddb = await self._ddb()
        try:
            await ddb.delete_item(
                TableName=self.table, Key={"id": {"S": self._id(sop)}}, ConditionExpression="#o = :t",
                ExpressionAttributeNames={"#o": "owner"}, ExpressionAttributeValues={":t": {"S": claim.token}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
