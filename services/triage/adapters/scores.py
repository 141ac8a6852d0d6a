"""The ``scores`` table: one record per instance (its latest triage outcome), the backlog of images that
arrived before any model was approved (records flagged ``awaiting_model``), and the scored images nobody has read yet
(which a new champion re-scores).

The backlog is the sparse index ``by_backlog``: only waiting records carry its key (``backlog_pk``), so reading it
costs the backlog, not the table. Several triage tasks may work through it at once: each record is *claimed*
(a conditional write naming the task and a lease) before it is scored, so only one task scores and publishes it; a
claim whose task died passes with its lease and the next run takes the record.

The unread scored records are the sparse index ``by_unread`` (key ``unread_pk``, sorted by arrival). A record leaves
it when the image is read (``ImageVerified`` sets ``verified``; a score written after that never re-enters it). A
re-scoring pass claims each record the same way, on the condition that it is still unread and not yet scored by the
new champion, so each unread image is re-scored once per champion whichever tasks take part.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any, Literal

from shared.aws import AwsClients
from shared.ddb import collect, from_item, to_item, to_value, write_if
from shared.events import InstanceScored
from shared.exceptions import ConditionFailedError

#: The ``by_backlog`` partition key of a waiting record.
BACKLOG = "awaiting_model"
#: The ``by_unread`` partition key of a scored record that nobody has read.
UNREAD = "unread"
#: Re-scoring's claim: the record is still unread and the claiming champion has not scored it.
#: An unread record the champion has not scored, or has scored without its InstanceScored published yet.
_RESCORE_CLAIMABLE = "unread_pk = :unread AND (model_version <> :v OR attribute_exists(publish_pending))"


class Scores:
    """Writes score records and reads the backlog (codec and paging from :mod:`shared.ddb`)."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.table = clients.settings.topology.table("scores")

    async def put(self, scored: InstanceScored, *, awaiting_model: bool, arrived_at: str | None = None,
                  pending: Literal["backlog", "rescore"] | None = None) -> bool:
        """Replace the instance's record; ``awaiting_model`` puts it in the backlog (a scored record leaves it), and a
        scored record of an image nobody has read joins the unread index (``arrived_at``, now when not given, is its
        order there).

        An image read already keeps its ``verified`` mark and stays out of both indexes (the conditional write tells,
        consistently, without a read first). Returns False for such an image, True otherwise.

        ``pending``: written by a backlog or re-scoring pass, which no queue message drives again. The record is
        marked ``publish_pending`` and stays where its pass finds it (in the backlog, or claimable for re-scoring)
        until :meth:`published` says its InstanceScored went out: a pass killed, stopped or failing between the two
        wrote the score and lost the event for good (found by a review); the next pass publishes it again, under the
        same event id."""
        record: dict[str, Any] = {
            "sop_uid": scored.sop_uid, "study_uid": scored.study_uid, "series_uid": scored.series_uid,
            "status": scored.status, "priority": scored.priority,
            "scored_at": (now := datetime.now(UTC).isoformat(timespec="milliseconds")),
            "arrived_at": arrived_at or now,
            "probability": scored.probability, "threshold": scored.threshold, "model_version": scored.model_version,
            "heatmap_key": scored.heatmap_key or None, "reason": scored.reason or None,
            "patient_pseudo_id": scored.patient_pseudo_id or None,
            # the id of the InstanceScored this record published: a re-score names it as the score it replaces
            "event_id": scored.event_id,
        }
        if awaiting_model or pending == "backlog":
            record["awaiting_model"] = True
            record["backlog_pk"] = BACKLOG
        if pending:
            record["publish_pending"] = True
        if scored.status == "scored":
            record["unread_pk"] = UNREAD
        ddb = await self.clients.dynamodb()
        try:
            await write_if(ddb.put_item, TableName=self.table, Item=to_item(record),
                           ConditionExpression="attribute_not_exists(verified)")
        except ConditionFailedError:  # read already: the score is kept, but it orders nothing and waits for nothing
            for key in ("unread_pk", "awaiting_model", "backlog_pk", "publish_pending"):
                record.pop(key, None)
            record["verified"] = True
            await ddb.put_item(TableName=self.table, Item=to_item(record))
            return False
        return True

    async def published(self, sop_uid: str, event_id: str) -> None:
        """The InstanceScored of the record written with ``pending`` went out: it leaves the backlog and its pass's
        claims (a record replaced since, with another event id, is left alone)."""
        ddb = await self.clients.dynamodb()
        with contextlib.suppress(ConditionFailedError):
            await write_if(ddb.update_item, TableName=self.table, Key={"sop_uid": to_value(sop_uid)},
                           UpdateExpression="REMOVE publish_pending, awaiting_model, backlog_pk, claim_owner, "
                                            "claim_until, rescore_owner, rescore_until",
                           ConditionExpression="event_id = :e", ExpressionAttributeValues={":e": to_value(event_id)})

    async def recorded(self, sop_uid: str) -> dict[str, Any] | None:
        """The instance's score record (strongly consistent), or None."""
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.table, Key={"sop_uid": to_value(sop_uid)}, ConsistentRead=True)
        return from_item(resp.get("Item")) if resp.get("Item") else None

    async def mark_read(self, sop_uid: str) -> None:
        """The image was read (``ImageVerified``): it leaves the unread index for good, and no re-scoring claim on it
        stands. Idempotent; creates a bare marker when the image was read before triage wrote anything for it."""
        ddb = await self.clients.dynamodb()
        await ddb.update_item(TableName=self.table, Key={"sop_uid": to_value(sop_uid)},
                              UpdateExpression="SET verified = :t REMOVE unread_pk, rescore_owner, rescore_until",
                              ExpressionAttributeValues={":t": to_value(True)})

    async def unread(self, limit: int, *, not_version: int) -> list[dict[str, Any]]:
        """Of the ``limit`` most recently arrived unread scored records, those that model ``not_version`` has not
        scored, newest arrival first. Reads at most ``limit`` records however many the champion has scored already,
        so a pass costs its bound, and older images keep their score.

        Eventually consistent like :meth:`backlog`: :meth:`claim_rescore` is the consistent check."""
        ddb = await self.clients.dynamodb()
        newest = await collect(ddb.query, limit_items=limit, TableName=self.table, IndexName="by_unread",
                               KeyConditionExpression="unread_pk = :u",
                               ExpressionAttributeValues={":u": to_value(UNREAD)},
                               ScanIndexForward=False, Limit=min(max(limit, 1), 1000))
        return [it for it in newest if it.get("model_version") is None or int(it["model_version"]) != not_version
                or it.get("publish_pending")]

    async def backlog(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` records still awaiting a model, oldest first (plain dicts), from the ``by_backlog`` index.

        The index is eventually consistent: a record may still be listed just after it left the backlog, which
        :meth:`claim` (a consistent conditional write) tells."""
        ddb = await self.clients.dynamodb()
        return await collect(ddb.query, limit_items=limit, TableName=self.table, IndexName="by_backlog",
                             KeyConditionExpression="backlog_pk = :b", ExpressionAttributeValues={":b": to_value(BACKLOG)},
                             Limit=min(max(limit, 1), 1000))

    async def claim(self, sop_uid: str, owner: str, lease_s: float) -> bool:
        """Claim a backlog record for scoring by ``owner`` for ``lease_s``; False when it is no longer waiting or
        another live claim holds it (that task scores it)."""
        return await self._claim(sop_uid, owner, lease_s, "claim", "awaiting_model = :t", {":t": to_value(True)})

    async def unclaim(self, sop_uid: str, owner: str) -> None:
        """Give a claim back (scoring failed): the record waits for the next run, which need not wait for the lease."""
        await self._unclaim(sop_uid, owner, "claim")

    async def claim_rescore(self, sop_uid: str, owner: str, lease_s: float, version: int) -> bool:
        """Claim an unread record for re-scoring by champion ``version``; False when it was read meanwhile, that
        version scored it already, or another live claim holds it."""
        return await self._claim(sop_uid, owner, lease_s, "rescore", _RESCORE_CLAIMABLE,
                                 {":unread": to_value(UNREAD), ":v": to_value(version)})

    async def unclaim_rescore(self, sop_uid: str, owner: str) -> None:
        """Give a re-scoring claim back (scoring failed): the next pass may take the record at once."""
        await self._unclaim(sop_uid, owner, "rescore")

    async def _claim(self, sop_uid: str, owner: str, lease_s: float, kind: str, condition: str,
                     values: dict[str, Any]) -> bool:
        """The lease protocol of both claims: ``condition`` holds, and no other owner's lease is live."""
        ddb = await self.clients.dynamodb()
        now = time.time()
        try:
            await write_if(ddb.update_item, TableName=self.table, Key={"sop_uid": to_value(sop_uid)},
                           UpdateExpression=f"SET {kind}_owner = :o, {kind}_until = :u",
                           ConditionExpression=f"{condition} AND (attribute_not_exists({kind}_until) "
                                               f"OR {kind}_until < :now OR {kind}_owner = :o)",
                           ExpressionAttributeValues={**values, ":o": to_value(owner),
                                                      ":u": to_value(now + lease_s), ":now": to_value(now)})
        except ConditionFailedError:
            return False
        return True

    async def _unclaim(self, sop_uid: str, owner: str, kind: str) -> None:
        ddb = await self.clients.dynamodb()
        try:
            await write_if(ddb.update_item, TableName=self.table, Key={"sop_uid": to_value(sop_uid)},
                           UpdateExpression=f"REMOVE {kind}_owner, {kind}_until",
                           ConditionExpression=f"{kind}_owner = :o", ExpressionAttributeValues={":o": to_value(owner)})
        except ConditionFailedError:
            pass  # scored meanwhile, or the lease passed and another task holds it

    async def leave_backlog(self, sop_uid: str, reason: str) -> bool:
        """Take an instance out of the backlog with ``reason``; False when it was not in it (scored, or never
        waiting), which makes a redelivered event a no-op."""
        ddb = await self.clients.dynamodb()
        try:
            await write_if(ddb.update_item, TableName=self.table, Key={"sop_uid": to_value(sop_uid)},
                           UpdateExpression="REMOVE awaiting_model, backlog_pk, claim_owner, claim_until SET reason = :r",
                           ConditionExpression="awaiting_model = :t",
                           ExpressionAttributeValues={":t": to_value(True), ":r": to_value(reason)})
        except ConditionFailedError:
            return False
        return True
