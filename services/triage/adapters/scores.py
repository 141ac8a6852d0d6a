"""The ``scores`` table: one record per instance (its latest triage outcome), and the backlog of images that
arrived before any model was approved (records flagged ``awaiting_model``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.aws import AwsClients
from shared.ddb import collect, to_item, to_value, write_if
from shared.events import InstanceScored
from shared.exceptions import ConditionFailedError


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
            record["patient_pseudo_id"] = scored.patient_pseudo_id or None
        ddb = await self.clients.dynamodb()
        await ddb.put_item(TableName=self.table, Item=to_item(record))

    async def backlog(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` records still awaiting a model (plain dicts)."""
        ddb = await self.clients.dynamodb()
        return await collect(ddb.scan, limit_items=limit, TableName=self.table,
                             FilterExpression="awaiting_model = :t", ExpressionAttributeValues={":t": to_value(True)})

    async def leave_backlog(self, sop_uid: str, reason: str) -> bool:
        """Take an instance out of the backlog with ``reason``; False when it was not in it (scored, or never
        waiting), which makes a redelivered event a no-op."""
        ddb = await self.clients.dynamodb()
        try:
            await write_if(ddb.update_item, TableName=self.table, Key={"sop_uid": to_value(sop_uid)},
                           UpdateExpression="REMOVE awaiting_model SET reason = :r",
                           ConditionExpression="awaiting_model = :t",
                           ExpressionAttributeValues={":t": to_value(True), ":r": to_value(reason)})
        except ConditionFailedError:
            return False
        return True
