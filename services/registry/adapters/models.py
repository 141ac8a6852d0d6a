"""The registry's DynamoDB records: one ``models`` item per version, and the champion pointer (:mod:`shared.champion`).

Every conditional write goes through :func:`shared.ddb.write_if`; a false condition is a typed
:class:`~shared.exceptions.ConditionFailedError`, never a string check.
"""

from __future__ import annotations

from typing import Any

from services.registry.domain.errors import DecisionConflict, UnknownVersionError
from shared.aws import AwsClients
from shared.champion import ChampionPointer, read_champion, replace_champion
from shared.ddb import collect, from_item, to_item, to_value, write_if
from shared.exceptions import ConditionFailedError


class ModelRecords:
    """The ``models`` table and the champion pointer in the ``state`` table."""

    def __init__(self, clients: AwsClients) -> None:
        topo = clients.settings.topology
        self.clients = clients
        self.models_table = topo.table("models")
        self.state_table = topo.table("state")

    async def champion(self) -> ChampionPointer | None:
        """The current champion pointer, or None before the first approval."""
        return await read_champion(await self.clients.dynamodb(), self.state_table)

    async def replace_champion(self, pointer: ChampionPointer, *, previous_version: int | None) -> None:
        """Point at ``pointer`` only if the champion is still ``previous_version``; a race is a 409."""
        try:
            await replace_champion(await self.clients.dynamodb(), self.state_table, pointer,
                                   previous_version=previous_version)
        except ConditionFailedError:
            raise DecisionConflict("the champion changed while this decision was made; retry") from None

    async def get(self, version: int) -> dict[str, Any]:
        """One version's record (consistent read); :class:`UnknownVersionError` when there is none."""
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.models_table, Key={"version": {"N": str(int(version))}},
                                  ConsistentRead=True)
        item = from_item(resp.get("Item"))
        if item is None:
            raise UnknownVersionError(f"model version {version} does not exist")
        return item

    async def list(self) -> list[dict[str, Any]]:
        """Every version, oldest first."""
        ddb = await self.clients.dynamodb()
        items = await collect(ddb.scan, TableName=self.models_table, ConsistentRead=True)
        return sorted(items, key=lambda m: m["version"])

    async def put_new(self, model: dict[str, Any]) -> bool:
        """Write a version's record if absent; False when another delivery wrote it first."""
        ddb = await self.clients.dynamodb()
        try:
            await write_if(ddb.put_item, TableName=self.models_table, Item=to_item(model),
                           ConditionExpression="attribute_not_exists(version)")
        except ConditionFailedError:
            return False
        return True

    async def claim_publish(self, version: int, flag: str, *, now: float, lease_s: float) -> bool:
        """Claim the publishing of the event that ``flag`` records; True for one caller at a time.

        A claim holds for ``lease_s`` (``<flag>_attempt_at``). The holder sets ``flag`` once the event went out
        (:meth:`update`) or drops its claim when publishing failed (:meth:`release_publish`). A holder killed between
        the two leaves ``flag`` false: a later delivery claims it again once the lease has passed and publishes under
        the same event id (found by a review: ``ModelRegistered`` was flagged as published and never sent)."""
        ddb = await self.clients.dynamodb()
        try:
            await write_if(
                ddb.update_item, TableName=self.models_table, Key={"version": {"N": str(version)}},
                UpdateExpression="SET #a = :now",
                ConditionExpression="#f = :f AND (attribute_not_exists(#a) OR #a < :stale)",
                ExpressionAttributeNames={"#f": flag, "#a": f"{flag}_attempt_at"},
                ExpressionAttributeValues={":f": {"BOOL": False}, ":now": to_value(now),
                                           ":stale": to_value(now - lease_s)},
            )
        except ConditionFailedError:
            return False
        return True

    async def release_publish(self, version: int, flag: str) -> None:
        """Drop a claim of :meth:`claim_publish` whose event did not go out, so the next delivery may publish."""
        ddb = await self.clients.dynamodb()
        await ddb.update_item(TableName=self.models_table, Key={"version": {"N": str(version)}},
                              UpdateExpression="REMOVE #a", ExpressionAttributeNames={"#a": f"{flag}_attempt_at"})

    async def update(self, version: int, fields: dict[str, Any]) -> None:
        """Set ``fields`` on a version's record."""
        ddb = await self.clients.dynamodb()
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": to_value(v) for i, v in enumerate(fields.values())}
        await ddb.update_item(
            TableName=self.models_table, Key={"version": {"N": str(version)}},
            UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )
