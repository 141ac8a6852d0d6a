"""The ``scores`` table: one record per instance (its latest triage outcome), and the backlog of images that
arrived before any model was approved (records flagged ``awaiting_model``).

The backlog is the sparse index ``by_backlog``: only waiting records carry its key (``backlog_pk``), so reading it
costs the backlog, not the table. Several triage tasks may work through it at once: each record is *claimed*
(a conditional write naming the task and a lease) before it is scored, so only one task scores and publishes it; a
claim whose task died passes with its lease and the next run takes the record.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from shared.aws import AwsClients
from shared.ddb import collect, to_item, to_value, write_if
from shared.events import InstanceScored
from shared.exceptions import ConditionFailedError

#: The ``by_backlog`` partition key of a waiting record.
BACKLOG = "awaiting_model"


class Scores:
    """Writes score records and reads the backlog (codec and paging from :mod:`shared.ddb`)."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.table = clients.settings.topology.table("scores")

    async def put(self, scored: InstanceScored, *, awaiting_model: bool) -> None:
        """Replace the instance's record; ``awaiting_model`` puts it in the backlog (a scored record leaves it)."""
        record: dict[str, Any] = {
            "sop_uid": scored.sop_uid, "study_uid": scored.study_uid, "series_uid": scored.series_uid,
            "status": scored.status, "priority": scored.priority,
            "scored_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "probability": scored.probability, "threshold": scored.threshold, "model_version": scored.model_version,
            "heatmap_key": scored.heatmap_key or None, "reason": scored.reason or None,
        }
        if awaiting_model:
            record["awaiting_model"] = True
            record["backlog_pk"] = BACKLOG
            record["patient_pseudo_id"] = scored.patient_pseudo_id or None
        ddb = await self.clients.dynamodb()
        await ddb.put_item(TableName=self.table, Item=to_item(record))

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
        ddb = await self.clients.dynamodb()
        now = time.time()
        try:
            await write_if(ddb.update_item, TableName=self.table, Key={"sop_uid": to_value(sop_uid)},
                           UpdateExpression="SET claim_owner = :o, claim_until = :u",
                           ConditionExpression="awaiting_model = :t AND (attribute_not_exists(claim_until) "
                                               "OR claim_until < :now OR claim_owner = :o)",
                           ExpressionAttributeValues={":t": to_value(True), ":o": to_value(owner),
                                                      ":u": to_value(now + lease_s), ":now": to_value(now)})
        except ConditionFailedError:
            return False
        return True

    async def unclaim(self, sop_uid: str, owner: str) -> None:
        """Give a claim back (scoring failed): the record waits for the next run, which need not wait for the lease."""
        ddb = await self.clients.dynamodb()
        try:
            await write_if(ddb.update_item, TableName=self.table, Key={"sop_uid": to_value(sop_uid)},
                           UpdateExpression="REMOVE claim_owner, claim_until", ConditionExpression="claim_owner = :o",
                           ExpressionAttributeValues={":o": to_value(owner)})
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
