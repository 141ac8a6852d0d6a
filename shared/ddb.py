"""DynamoDB item conversion (plain JSON-like dicts <-> attribute values), floats kept as Decimal on the wire.

Shared by the services that keep JSON-like records (orchestrator runs, registry versions)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

_ser = TypeSerializer()
_de = TypeDeserializer()


def to_item(data: dict[str, Any]) -> dict[str, Any]:
    """Serialise a JSON-compatible dict (floats allowed, None values dropped) into a DynamoDB item."""
    clean = json.loads(json.dumps({k: v for k, v in data.items() if v is not None}, default=str), parse_float=Decimal)
    return {k: _ser.serialize(v) for k, v in clean.items()}


def to_value(value: Any) -> dict[str, Any]:
    """Serialise one JSON-compatible value into an attribute value."""
    return _ser.serialize(json.loads(json.dumps(value, default=str), parse_float=Decimal))


def from_item(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """Deserialise a DynamoDB item into plain Python (Decimal -> int or float)."""
    if item is None:
        return None
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | set | tuple):
        return [_plain(x) for x in v]
    return v


async def scan_all(ddb: Any, table: str, **kw: Any) -> list[dict[str, Any]]:
    """Every item of a table (paginated scan), deserialised."""
    out: list[dict[str, Any]] = []
    start: dict[str, Any] | None = None
    while True:
        resp = await ddb.scan(TableName=table, **kw, **({"ExclusiveStartKey": start} if start else {}))
        out += [from_item(i) for i in resp.get("Items", [])]  # type: ignore[misc]
        start = resp.get("LastEvaluatedKey")
        if not start:
            return out


def is_conditional_failure(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
