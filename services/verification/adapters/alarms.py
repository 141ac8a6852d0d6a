"""Degradation alarms in the state table: one item per (model version, metric) while a breach episode lasts.

The conditional put makes ``ModelPerformanceDegraded`` a once-per-episode event across processes; deleting the item
when the metric recovers re-arms the alarm.
"""

from __future__ import annotations

from shared.aws import AwsClients
from shared.ddb import to_item, to_value, write_if
from shared.exceptions import ConditionFailedError


class DegradationAlarms:
    """Raise-once flags for performance breaches."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.table = clients.settings.topology.table("state")

    @staticmethod
    def _key(model_version: int, metric: str) -> str:
        return f"verification#degraded#{model_version}#{metric}"

    async def raise_once(self, model_version: int, metric: str, value: float) -> bool:
        """Record the breach; False when it was already raised in this episode."""
        ddb = await self.clients.dynamodb()
        try:
            await write_if(ddb.put_item, TableName=self.table,
                           Item=to_item({"key": self._key(model_version, metric), "value": float(value)}),
                           ConditionExpression="attribute_not_exists(#k)", ExpressionAttributeNames={"#k": "key"})
        except ConditionFailedError:
            return False
        return True

    async def clear(self, model_version: int, metric: str) -> None:
        """End the episode (the metric recovered, or the event could not be published): the next breach raises."""
        ddb = await self.clients.dynamodb()
        await ddb.delete_item(TableName=self.table, Key={"key": to_value(self._key(model_version, metric))})
