"""Degradation alarms in the state table: one item per (model version, metric) while a breach episode lasts.

The conditional put makes ``ModelPerformanceDegraded`` a once-per-episode event across processes; deleting the item
when the metric recovers re-arms the alarm.
"""

from __future__ import annotations

import time

from shared.aws import AwsClients
from shared.ddb import to_value, write_if
from shared.exceptions import ConditionFailedError

#: Seconds a process has to publish a breach it raised before another check may publish it instead.
PUBLISH_LEASE_S = 30.0


class DegradationAlarms:
    """Raise-once flags for performance breaches."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.table = clients.settings.topology.table("state")

    @staticmethod
    def _key(model_version: int, metric: str) -> str:
        return f"verification#degraded#{model_version}#{metric}"

    async def raise_once(self, model_version: int, metric: str, value: float) -> str | None:
        """Record the breach and return its episode (when it was first raised), for the caller to publish; None when
        it was raised and published already in this episode, or another process is publishing it (for up to
        :data:`PUBLISH_LEASE_S`). A breach whose event never went out (:meth:`published` not called: the process died
        or the bus failed between the two) is handed out again after that lease, with the same episode (found by a
        review: the alarm was recorded and its event lost for good)."""
        ddb = await self.clients.dynamodb()
        now = time.time()
        try:
            resp = await write_if(
                ddb.update_item, TableName=self.table, Key={"key": to_value(self._key(model_version, metric))},
                UpdateExpression="SET #v = :v, published = :f, attempt_at = :now, "
                                 "raised_at = if_not_exists(raised_at, :now)",
                ConditionExpression="attribute_not_exists(#k) OR (published = :f AND attempt_at < :stale)",
                ExpressionAttributeNames={"#k": "key", "#v": "value"},
                ExpressionAttributeValues={":v": to_value(float(value)), ":f": to_value(False), ":now": to_value(now),
                                           ":stale": to_value(now - PUBLISH_LEASE_S)},
                ReturnValues="ALL_NEW")
        except ConditionFailedError:
            return None
        return str(resp.get("Attributes", {}).get("raised_at", {}).get("N", now))

    async def published(self, model_version: int, metric: str) -> None:
        """The breach's event went out: raised for good in this episode."""
        ddb = await self.clients.dynamodb()
        await ddb.update_item(TableName=self.table, Key={"key": to_value(self._key(model_version, metric))},
                              UpdateExpression="SET published = :t", ExpressionAttributeValues={":t": to_value(True)})

    async def clear(self, model_version: int, metric: str) -> None:
        """End the episode (the metric recovered, or the event could not be published): the next breach raises."""
        ddb = await self.clients.dynamodb()
        await ddb.delete_item(TableName=self.table, Key={"key": to_value(self._key(model_version, metric))})
