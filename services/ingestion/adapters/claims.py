"""Per-instance claims: the idempotency of ingestion, keyed by SOP Instance UID plus content hash.

A claim is a lease record ``ingest#sop#{sop}`` (:mod:`shared.lease`, the protocol the idempotency store uses, on the
same table) with no expiry, holding the content hash ``sha`` of the received bytes and ``ident``, the hash of the
data set as encoded (transfer syntax and the bytes after the file meta). The same data set arriving with another
file meta (over DIMSE, where the receiver writes the meta, and then as the sender's file over STOW-RS; or a file
whose meta another tool rewrote) is the same content: "same sha" below means the same ``sha`` or the same ``ident``
(claims written before ``ident`` existed compare by ``sha`` alone)::

    sender A: acquire INPROGRESS(sop, sha) ──ok──> store, index, publish ──> COMPLETED
    sender B (same sop, same sha): claim taken -> COMPLETED: acknowledged as a duplicate (no copy, no event)
                                               INPROGRESS: wait for A (bounded), then the same, or
                                                           TransientFailure (retry later) if A is still busy
    sender C (same sop, other sha): 0x0111 duplicate SOP instance, unless overwrite is configured

An owner that fails releases its claim. An owner that dies leaves an INPROGRESS claim whose lease expires, after
which the next sender with the same content takes it over and completes the work (every step is idempotent: S3 PUTs
of the same bytes, an index write that recognises the same content hash, an event with a deterministic id).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

from shared.dicom.errors import DUPLICATE_SOP_INSTANCE, OUT_OF_RESOURCES, DicomRejection, TransientFailure
from shared.lease import COMPLETED, DdbFactory, LeaseTable, LeaseTaken, new_token


@dataclass
class Claim:
    """The outcome of :meth:`ClaimStore.acquire`: ours to work on (``owner``), or a completed ``duplicate``."""

    outcome: Literal["owner", "duplicate"]
    token: str
    replacing: bool = False


class ClaimStore:
    """Claims of SOP instances in the idempotency table."""

    def __init__(self, ddb_factory: DdbFactory, table: str, *, lease_s: float = 120.0, wait_s: float = 60.0) -> None:
        self.leases = LeaseTable(ddb_factory, table)
        self.table = table
        self.lease_s = lease_s
        self.wait_s = wait_s

    @staticmethod
    def _id(sop: str) -> str:
        return f"ingest#sop#{sop}"

    async def acquire(self, sop: str, sha: str, *, ident: str | None = None, overwrite: bool = False) -> Claim:
        """Own the claim for (sop, sha), or learn it is a completed duplicate; raise 0x0111 on a conflict.

        ``ident`` is the data set's own hash (see the module docstring); a claim holding it is the same content
        whatever its ``sha``."""
        rid = self._id(sop)
        token = new_token()
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        attrs = {"sha": sha, **({"ident": ident} if ident else {})}
        while True:
            now = time.time()
            try:
                # A stale claim is taken over only for the same content: other content is a conflict, not a retry.
                await self.leases.acquire(rid, token, now=now, lease_until=now + self.lease_s, attrs=attrs,
                                          match_any=attrs)
                return Claim("owner", token)
            except LeaseTaken:
                pass
            item = await self.leases.get(rid)
            if item is not None:
                status, other = item.get("status"), str(item.get("sha", ""))
                if other != sha and not (ident and item.get("ident") == ident):
                    if overwrite and status == COMPLETED and await self._take_over(rid, attrs, other, token):
                        return Claim("owner", token, replacing=True)
                    if not overwrite or status == COMPLETED:
                        raise DicomRejection(
                            DUPLICATE_SOP_INSTANCE,
                            f"SOP Instance UID {sop} is already stored with different content (sha256 {other[:16]}...); "
                            f"this payload (sha256 {sha[:16]}...) was refused.", kind="conflicting-payload", sop_uid=sop)
                elif status == COMPLETED:
                    return Claim("duplicate", token)
            if time.monotonic() > deadline:
                # Transient, not a refusal: the other upload may fail and release the claim, so the sender must
                # retry (STOW 503 + Retry-After, SQS redelivery leaving the file in imports/), never drop the file.
                raise TransientFailure(OUT_OF_RESOURCES, f"Another upload of SOP instance {sop} is still being "
                                       "processed; retry later.", kind="in-progress-elsewhere", sop_uid=sop)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def _take_over(self, rid: str, attrs: dict[str, str], old_sha: str, token: str) -> bool:
        # Overwrite (configured): replace a completed claim of other content, only if it is still that one.
        return await self.leases.take_over(rid, token, lease_until=time.time() + self.lease_s,
                                           condition="#s = :done AND sha = :old", names={"#s": "status"},
                                           values={":done": COMPLETED, ":old": old_sha}, attrs=attrs)

    def complete_item(self, sop: str, claim: Claim) -> dict[str, Any]:
        """The claim completion as an ``Update`` for a transaction (only if the claim is still ours)."""
        return self.leases.complete_item(self._id(sop), claim.token)

    async def complete(self, sop: str, claim: Claim) -> None:
        """Complete an owned claim outside a transaction."""
        await self.leases.complete(self._id(sop), claim.token)

    async def holds(self, sop: str, claim: Claim) -> bool:
        """Whether the claim is still ours (a consistent read)."""
        return await self.leases.holds(self._id(sop), claim.token)

    async def release_token(self, sop: str, token: str) -> None:
        """Delete the claim (completed or not) if ``token`` still owns it: an import that the image store refused
        after the sender was acknowledged, so that sending the instance again stores it."""
        await self.leases.release(self._id(sop), token)

    async def release(self, sop: str, claim: Claim) -> None:
        """Give up an owned claim after a failure, so a retry can run (only if it is still ours)."""
        await self.leases.release(self._id(sop), claim.token)
