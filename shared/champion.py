"""The champion pointer: the one module that writes and reads which model version is approved for scoring.

The registry writes it (state table, item ``key = "champion"``) with optimistic concurrency; triage reads it at
start-up, and the orchestrator reads it to give the pipeline's Evaluate step the champion to re-score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shared.ddb import from_item, to_item, write_if

#: The state table's key of the pointer item.
CHAMPION_KEY = "champion"


@dataclass(frozen=True)
class ChampionPointer:
    """Which model version scores new images, where its artefact is, and its operating threshold."""

    version: int
    model_artifact_uri: str
    threshold: float
    model_package_arn: str = ""
    auc: float | None = None
    run_id: str | None = None
    updated_at: str | None = None

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ChampionPointer:
        """From a deserialised state-table item."""
        return cls(
            version=int(rec["version"]),
            model_artifact_uri=str(rec.get("model_artifact_uri") or ""),
            threshold=float(rec.get("threshold", 0.5)),
            model_package_arn=str(rec.get("model_package_arn") or ""),
            auc=None if rec.get("auc") is None else float(rec["auc"]),
            run_id=rec.get("run_id"),
            updated_at=rec.get("updated_at"),
        )

    def to_record(self) -> dict[str, Any]:
        """The plain record stored under :data:`CHAMPION_KEY` (with ``key``)."""
        return {"key": CHAMPION_KEY, **asdict(self)}


async def read_champion(ddb: Any, state_table: str) -> ChampionPointer | None:
    """The current pointer (consistent read), or None when no model was ever approved."""
    resp = await ddb.get_item(TableName=state_table, Key={"key": {"S": CHAMPION_KEY}}, ConsistentRead=True)
    rec = from_item(resp.get("Item"))
    return ChampionPointer.from_record(rec) if rec else None


async def replace_champion(ddb: Any, state_table: str, pointer: ChampionPointer, *, previous_version: int | None) -> None:
    """Write ``pointer`` only if the champion is still ``previous_version`` (None: no champion yet).

    Two decisions racing cannot both believe they replaced the same champion: the loser gets
    :class:`~shared.exceptions.ConditionFailedError`.
    """
    if previous_version is None:
        cond: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(#k)",
                                "ExpressionAttributeNames": {"#k": "key"}}
    else:
        cond = {"ConditionExpression": "version = :prev",
                "ExpressionAttributeValues": {":prev": {"N": str(previous_version)}}}
    await write_if(ddb.put_item, TableName=state_table, Item=to_item(pointer.to_record()), **cond)
