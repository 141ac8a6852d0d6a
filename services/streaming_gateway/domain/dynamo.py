"""Plain-Python conversion of DynamoDB attribute values (faster than boto3's TypeDeserializer for our items)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def _value(v: dict[str, Any]) -> Any:
    (t, x), = v.items()
    if t == "S":
        return x
    if t == "N":
        d = Decimal(x)
        return int(d) if d == d.to_integral_value() else float(d)
    if t == "L":
        return [_value(e) for e in x]
    if t == "M":
        return {k: _value(e) for k, e in x.items()}
    if t == "SS":
        return list(x)
    if t == "NS":
        return [_value({"N": e}) for e in x]
    if t == "BOOL":
        return bool(x)
    if t == "NULL":
        return None
    return x


def item(raw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One DynamoDB item as a plain dict."""
    return {k: _value(v) for k, v in raw.items()}
