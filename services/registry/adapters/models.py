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

    async def claim_flag(self, version: int, flag: str) -> bool:
        """Flip ``flag`` from false to true; True for exactly one caller (concurrent duplicates publish once)."""
        ddb = await self.clients.dynamodb()
        try:
            await write_if(
                ddb.update_item, TableName=self.models_table, Key={"version": {"N": str(version)}},
                UpdateExpression="SET #f = :t", ConditionExpression="#f = :f", ExpressionAttributeNames={"#f": flag},
                ExpressionAttributeValues={":t": {"BOOL": True}, ":f": {"BOOL": False}},
            )
        except ConditionFailedError:
            return False
        return True

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
