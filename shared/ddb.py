"""The one DynamoDB layer: item codec, paging and conditional writes.

- :func:`to_item` / :func:`from_item`: plain JSON-like dicts <-> attribute values (floats travel as Decimal);
- :func:`pages` / :func:`collect`: paginated ``query`` and ``scan`` (no hand-written ``LastEvaluatedKey`` loops);
- :func:`write_if`: a conditional write whose false condition raises :class:`ConditionFailedError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from shared.exceptions import ConditionFailedError

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
    return await collect(ddb.scan, TableName=table, **kw)


def is_conditional_failure(exc: Exception) -> bool:
    """Whether a DynamoDB call failed on its condition (a plain write, or one item of a transaction)."""
    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code")
    if code == "ConditionalCheckFailedException":
        return True
    reasons = exc.response.get("CancellationReasons") or []
    return code == "TransactionCanceledException" and any(
        r.get("Code") == "ConditionalCheckFailed" for r in reasons)


async def write_if(call: Callable[..., Awaitable[Any]], **kw: Any) -> Any:
    """Run a conditional DynamoDB write; a false condition raises :class:`ConditionFailedError` (typed, not a string
    check at every call site). Pass ``ReturnValuesOnConditionCheckFailure="ALL_OLD"`` to get the current item in
    ``exc.item`` (deserialised)."""
    try:
        return await call(**kw)
    except ClientError as exc:
        if not is_conditional_failure(exc):
            raise
        raw = exc.response.get("Item")
        raise ConditionFailedError(item=from_item(raw) if raw else None) from None


async def pages(call: Callable[..., Awaitable[dict[str, Any]]], *, limit_items: int | None = None,
                **kw: Any) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield the raw ``Items`` of each page of a ``query`` or ``scan`` (``ExclusiveStartKey`` handled here).

    ``limit_items`` stops after that many items in all (the last page is cut), so no caller walks a table unbounded.
    """
    start: dict[str, Any] | None = None
    seen = 0
    while True:
        resp = await call(**kw, **({"ExclusiveStartKey": start} if start else {}))
        items = resp.get("Items", [])
        if limit_items is not None and seen + len(items) >= limit_items:
            yield items[: limit_items - seen]
            return
        seen += len(items)
        yield items
        start = resp.get("LastEvaluatedKey")
        if not start:
            return


async def collect(call: Callable[..., Awaitable[dict[str, Any]]], *, limit_items: int | None = None,
                  **kw: Any) -> list[dict[str, Any]]:
    """Every item of a paginated ``query``/``scan``, deserialised (at most ``limit_items``)."""
    out: list[dict[str, Any]] = []
    async for page in pages(call, limit_items=limit_items, **kw):
        out += [from_item(i) for i in page]  # type: ignore[misc]
    return out
