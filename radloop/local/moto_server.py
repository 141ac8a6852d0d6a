"""moto server, with two fixes to its DynamoDB that the embedded endpoint needs: ``python -m radloop.local.moto_server``.

moto 5.2.5 (``moto/dynamodb/models/__init__.py``) has two problems that a whole platform on one moto process runs
into, measured in ``radloop demo`` (docs/architecture.md, "The embedded endpoint"):

1. ``TransactWriteItems`` deep-copies **every table it touches** before it starts, to roll back on failure. The cost
   grows with the table: with a few hundred instances indexed, every ingestion and every radiologist's read (both
   are transactions) copied the whole index or case table, and moto became the bottleneck of the platform.
2. The server answers requests on threads, but its DynamoDB backend has no lock. Two conditional writes on one key
   can both succeed (real DynamoDB serialises them), and a deep copy racing a write fails with ``dictionary changed
   size during iteration`` (HTTP 500).

The fix here: every DynamoDB backend operation runs under one re-entrant lock (DynamoDB's per-item atomicity, made
coarse), and a transaction backs up only the items it touches and restores exactly those on failure. The
transaction keeps moto's own semantics otherwise (conditions checked per item, ``CancellationReasons`` in order).
Everything else is moto's server, unchanged (same flags as ``moto_server``).
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend

_LOCK = threading.RLock()
#: The backend operations that read or write table state (each runs under the lock).
_LOCKED = ("put_item", "get_item", "query", "scan", "update_item", "delete_item", "transact_write_items",
           "create_table", "delete_table", "update_table", "describe_table", "list_tables")


def _locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    wrapper.__radloop_locked__ = True  # type: ignore[attr-defined]
    return wrapper


def _key_of(backend: DynamoDBBackend, op_type: str, op: dict[str, Any]) -> dict[str, Any]:
    if op_type != "Put":
        return dict(op["Key"])
    attrs = op["Item"]
    table = backend.get_table(op["TableName"])
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """moto's ``transact_write_items`` with a per-item backup instead of a deep copy of each table."""
    from moto.dynamodb.comparisons import get_filter_expression

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    backups: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    seen: set[tuple[str, str]] = set()
    errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []

    def rollback() -> None:
        for table_name, key, old in reversed(backups):
            if old is None:
                if self.get_item(table_name, key) is not None:
                    self.delete_item(table_name, key)
            else:
                self.put_item(table_name, old)

    for item in transact_items:
        original_item: dict[str, Any] | None = None
        if len(list(item.keys())) > 1:
            raise TransactWriteSingleOpException
        try:
            op_type, op = next(iter(item.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            key = _key_of(self, op_type, op)
            marker = (str(table_name), str(dict(sorted(key.items()))))
            if marker in seen:
                raise MultipleTransactionsException()
            seen.add(marker)
            cond = op.get("ConditionExpression")
            names = op.get("ExpressionAttributeNames")
            values = op.get("ExpressionAttributeValues")
            current = self.get_item(table_name, key)
            if cond is not None and not get_filter_expression(cond, names, values).expr(current):
                if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                    original_item = current.to_json()["Attributes"]
                raise ConditionalCheckFailed(item=original_item)
            if op_type != "ConditionCheck":
                backups.append((table_name, key, copy.deepcopy(current.to_json()["Attributes"]) if current else None))
            if op_type == "Put":
                self.put_item(table_name, op["Item"], condition_expression=cond, expression_attribute_names=names,
                              expression_attribute_values=values)
            elif op_type == "Delete":
                self.delete_item(table_name, key, condition_expression=cond, expression_attribute_names=names,
                                 expression_attribute_values=values)
            elif op_type == "Update":
                self.update_item(table_name, key, update_expression=op["UpdateExpression"],
                                 condition_expression=cond, expression_attribute_names=names,
                                 expression_attribute_values=values)
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            rollback()
            raise
        except ConditionalCheckFailed as e:
            errors.append(("ConditionalCheckFailed", str(e.message), original_item))
        except Exception as e:  # moto's own behaviour: report the failure as the item's cancellation reason
            errors.append((type(e).__name__, str(e), original_item))
    if any(code is not None for code, _, _ in errors):
        rollback()
        raise TransactionCanceledException(errors)  # type: ignore[arg-type]


def patch() -> None:
    """Apply the fixes (idempotent)."""
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    for name in _LOCKED:
        fn = getattr(DynamoDBBackend, name, None)
        if fn is not None and not getattr(fn, "__radloop_locked__", False):
            setattr(DynamoDBBackend, name, _locked(fn))
    # One access-log line per request is most of what the log holds and costs CPU at a few hundred requests/s;
    # errors are still logged.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as moto_main

    patch()
    moto_main(argv)


if __name__ == "__main__":
    main()
