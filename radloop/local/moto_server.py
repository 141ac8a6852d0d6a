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

Six more changes remove work that moto repeats on every request, without changing any answer. A ``py-spy`` profile
of moto during ``radloop demo --quick`` (docs/architecture.md) put the first three at about 40% of its busy time:

3. Routing a request to its service lists moto's package directory (``os.listdir`` and one ``isdir`` per service,
   about 200) under the dispatcher's global lock. The answer depends only on the host name, so it is remembered.
4. EventBridge compiles the same JSONPath expressions (the default input paths) for every target of every event
   with ``jsonpath_ng``, which builds a parser each time. Compiled expressions are remembered.
5. SQS computes all of a queue's attributes (approximate counts walk every message) to read one number, the
   retention period, for every message it receives. It reads that number directly.
6. ``Table.query`` starts from ``all_items()``, which lists **and sorts every item of the table** (DynamoType
   comparisons in Python) for each Query, whatever its key, and only then keeps the items of the queried partition.
   A 1-item answer cost O(N log N) in the table's size; in the 2,000-image chaos run moto spent most of its time there
   and drained the interop queue at 0.5 messages/s. A table query now starts from its partition (the items moto
   keeps under that hash key), and an index query from the unsorted items, which moto then sorts by the index's
   keys (and the table's, so the order is total) as before. The answers, their order and the pages are unchanged
   (``tests/shared/test_embedded_aws.py`` compares both on the same tables). A table query with a sort-key condition
   (``begins_with``, ``BETWEEN``, ``<`` ...) starts from the partition's items that meet it: moto sorted every item of
   the partition and computed each one's size (every attribute walked) before skipping the rest, so the gateway's
   "series of a study" query (``begins_with(sk, "SERIES#")`` in a partition that also holds the study's instance
   items with their DICOM JSON) cost O(instances in the study).
7. SQS's ``send_message`` (every EventBridge delivery to a queue goes through it) builds the queue's whole
   attribute map, whose approximate counts walk every message in the queue, to read one flag,
   ``ContentBasedDeduplication``. With thousands of messages queued (the chaos run), that walk was 40% of moto's
   time. While a message is sent, the map it reads holds that flag only; every other reader gets the whole map.
8. Every receive (and every wake-up of a long poll) lists a queue's visible messages, asking the clock twice per
   message (``Message.visible``, ``Message.delayed``: ``datetime.utcnow()`` and arithmetic each time). With thousands
   queued, that was the next 30% of moto's time. The walk now reads the clock once.

9. **Keep-alive.** werkzeug's development server, which moto runs on, answers every request with
   ``Connection: close`` (on purpose: ``http.server`` cannot tell where an unread request body ends), so every call of
   every service opened a TCP connection and the server started a thread for it; a py-spy profile of ingestion under
   STOW load put 11% of its CPU in opening connections. :class:`KeepAliveHandler` reads exactly the request's
   ``Content-Length`` (whatever the application left unread) and answers with a ``Content-Length``, so the next request
   on the connection starts where it should, and the connection stays open. It is still one thread per connection,
   so an SQS long poll holds only its own connection (a fixed pool of threads, tried with waitress in session 15,
   queued every request behind long polls). A request without a length (chunked), an HTTP/1.0 request or one that
   asks to close is served by werkzeug's own code, unchanged.

10. **Index queries read their bucket.** A query of a secondary index walked every item of the table to keep those
    with the queried index hash key (patch 6 only spared it the sort), then sorted every item of that index
    partition before applying the sort-key condition. The worklist, triage's backlog and unread queries, the case
    outcomes, the outbox sweeps and QIDO's ``by_patient`` and ``by_level_shard`` searches are such queries, so their
    cost grew with the archive. :class:`_IndexBuckets` keeps, per table and index, the keys of the items under each
    index hash key, as DynamoDB's index does; every write re-files the one key it touched (a table's first write, or
    the first after ``UpdateTable`` changed its indexes, files every item once, as DynamoDB backfills a new index).
    A query with a condition on the index's sort key reads only that range of its bucket, kept in moto's order of an
    index query, and a query with a ``Limit`` only one page of it, from its ``ExclusiveStartKey`` on (session 20).
    The answers, their order and the pages are moto's (``tests/shared/test_embedded_aws.py`` compares them, in pages
    of 1 and 7, after puts, updates that move or drop an item's index key, deletes, cancelled transactions and a new
    index). The same test found patch 6's range filter dropping the ``LastEvaluatedKey`` of a page that a range's
    last item filled; it keeps the neighbours of the range now too. An index sorted by two attributes keeps no order (its
    queries read the whole bucket), and a start key of another index partition cuts no page. Known difference:
    moto's 1 MB page limit also counts items after a range that fail its condition (docs/architecture.md).

11. **Attribute values written as they are.** moto's JSON serializer writes each DynamoDB ``AttributeValue`` by walking
    the shape's ten members (``S``, ``N``, ``B`` ... ``BOOL``), looking each one up under several aliases; for a
    study item of 21 attributes that was about 1.3 ms, and 83% of a ``by_level_shard`` query returning 10 of them
    (cProfile, in-process: 16.6 ms a query; 3.3 ms after). The values are already in wire form, so
    :func:`_wire_value` copies them (strings and numbers as ``str``, as the serializer writes them); binary values,
    which are base64 on the wire, and anything unexpected still take moto's path
    (``tests/shared/test_embedded_aws.py`` reads every kind back through both).

12. **Expressions parsed once.** A conditional write's ``ConditionExpression`` is parsed three times per transaction
    item (moto's request validation, this module's condition check, and the write itself), and an
    ``UpdateExpression`` twice, although the index writer and the claims send the same few expression strings
    every time. Under STOW load the condition parser's tokenizer (a dozen regular expressions tried at each
    position) and the update-expression parser were about a fifth of the endpoint's time. The tokens of a condition
    (which depend on its text only: names and values are looked up after) and the syntax tree of an update expression
    are remembered per expression text (at most 1,024 of each). moto's validator deep-copies an update's tree before
    it resolves names and values into it, and nothing else changes either, so every answer and every error is
    moto's (``tests/shared/test_embedded_aws.py`` runs a battery of writes through both); a transaction like the
    index writer's takes about 22% less of the endpoint's CPU (11.3 to 8.8 ms).

13. **No debug mode, no unread access lines.** moto creates each service's Flask app with ``debug = True``. In debug
    mode Flask replaces every request's (empty) ``files`` map with a class it defines on the spot, and defining a
    class that way (``typing.Generic`` subclass hooks, ABC caches) was about 6% of the endpoint's CPU under STOW load
    (py-spy, session 22), most of S3 ``PutObject``'s request set-up. The apps run with ``debug = False``: an error
    inside moto is still a 500 (Flask's own handler instead of werkzeug's). werkzeug's access-log line for each
    request was also formatted in full (the path decoded, a timestamp string built) before the logger, at WARNING
    here, dropped it (about 3%); it is only formatted when the ``werkzeug`` logger would write it.

Everything else is moto's server, unchanged (same flags as ``moto_server``).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import functools
import logging
import operator
import socket
import threading
from collections import deque
from collections.abc import Callable
from decimal import Decimal
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
from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.wsgi import LimitedStream

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


def _patch_routing() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = DomainDispatcherApplication.get_backend_for_host
    if getattr(original, "__radloop_cached__", False):
        return
    cache: dict[str, Any] = {}

    @functools.wraps(original)
    def get_backend_for_host(self: Any, host: str | None) -> Any:
        if host is None:
            return None
        if host not in cache:  # a pure function of the host name: the same answer every time
            cache[host] = original(self, host)
        return cache[host]

    get_backend_for_host.__radloop_cached__ = True  # type: ignore[attr-defined]
    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]


def _patch_jsonpath() -> None:
    import jsonpath_ng.ext

    if not getattr(jsonpath_ng.ext.parse, "cache_info", None):
        # moto.events imports ``parse`` from the module at each call, so the cached function is the one it gets;
        # a compiled expression is not changed by ``find``
        jsonpath_ng.ext.parse = functools.lru_cache(maxsize=512)(jsonpath_ng.ext.parse)


_SENDING = threading.local()


def _patch_sqs_send() -> None:
    from moto.sqs.models import Queue, SQSBackend

    original_send = SQSBackend.send_message
    if getattr(original_send, "__radloop_cheap__", False):
        return
    full = Queue.attributes

    def attributes(self: Any) -> dict[str, Any]:
        if getattr(_SENDING, "active", False):  # send_message on this thread: only the flag it reads
            return ({"ContentBasedDeduplication": str(bool(self.content_based_deduplication)).lower()}
                    if self.fifo_queue else {})
        return full.fget(self)  # type: ignore[no-any-return, union-attr]

    @functools.wraps(original_send)
    def send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
        before = getattr(_SENDING, "active", False)
        _SENDING.active = True
        try:
            return original_send(self, *args, **kwargs)
        finally:
            _SENDING.active = before

    send_message.__radloop_cheap__ = True  # type: ignore[attr-defined]
    Queue.attributes = property(attributes)  # type: ignore[assignment, method-assign]
    SQSBackend.send_message = send_message  # type: ignore[method-assign]


def _patch_sqs_walks() -> None:
    from moto.core.utils import unix_time_millis
    from moto.sqs.models import Queue

    if getattr(Queue.messages.fget, "__radloop_one_clock__", False):  # type: ignore[attr-defined]
        return

    def messages(self: Any) -> list[Any]:
        now = unix_time_millis()  # Message.visible is ``now > visible_at``; delayed is ``now < delayed_until``
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    def not_visible(self: Any) -> int:
        now = unix_time_millis()
        return sum(1 for m in self._messages if not now > m.visible_at)

    def delayed(self: Any) -> int:
        now = unix_time_millis()
        return sum(1 for m in self._messages if now < m.delayed_until)

    messages.__radloop_one_clock__ = True  # type: ignore[attr-defined]
    Queue.messages = property(messages)  # type: ignore[assignment, method-assign]
    Queue.approximate_number_of_messages_not_visible = property(not_visible)  # type: ignore[assignment, method-assign]
    Queue.approximate_number_of_messages_delayed = property(delayed)  # type: ignore[assignment, method-assign]


def _patch_sqs_retention() -> None:
    from moto.core.utils import unix_time
    from moto.sqs.models import Message, SQSBackend

    def is_message_valid_based_on_retention_period(self: SQSBackend, queue_name: str, message: Message) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
        return bool(retention + message.sent_timestamp / 1000 > unix_time())  # type: ignore[operator]

    SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        is_message_valid_based_on_retention_period)


def _partition_items(table: Any, hash_key: Any) -> list[Any]:
    """The items of one partition (what ``all_items()`` filtered by hash key gave, before the sort by range key)."""
    part = table.items.get(hash_key)
    if part is None:
        return []
    return list(part.values()) if table.range_key_attr else [part]


def _unsorted_items(table: Any) -> list[Any]:
    if not table.range_key_attr:
        return list(table.items.values())
    return [item for part in table.items.values() for item in part.values()]


_MIXED = object()  # a bucket whose sort-key values are not all of one orderable type: no order kept
_ORDERABLE = (str, Decimal, bytes)


class _Top:
    """Sorts after every value (the upper end of a run of equal sort-key values in :attr:`_Bucket.order`)."""

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return True


_TOP = _Top()


def _cast(value: Any) -> Any:
    """A DynamoType's (or a wire attribute value's) Python value, as moto compares them."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    return (value if isinstance(value, DynamoType) else DynamoType(value)).cast_value


class _Bucket:
    """One index partition: its items' keys and, when the index has a sort key, ``order``: ``(sort-key value, table
    key values, item key)`` in moto's order of an index query (the index's sort key, then the table's hash and range
    keys, which make it total; the item key is never compared), so a query reads only the range its sort-key
    condition selects, and with a ``Limit`` only one page of it."""

    __slots__ = ("keys", "order", "kind")

    def __init__(self) -> None:
        self.keys: dict[tuple[Any, Any], tuple[Any, tuple[Any, ...], tuple[Any, Any]] | None] = {}
        self.order: list[tuple[Any, tuple[Any, ...], tuple[Any, Any]]] = []
        self.kind: Any = None

    def add(self, key: tuple[Any, Any], sort_value: Any) -> None:
        entry = None
        if sort_value is not None and self.kind is not _MIXED:
            cast = sort_value.cast_value
            if type(cast) not in _ORDERABLE or (self.kind is not None and type(cast) is not self.kind):
                self.kind, self.order = _MIXED, []
            else:
                self.kind = type(cast)
                entry = (cast, tuple(k.cast_value for k in key if k is not None), key)
                bisect.insort(self.order, entry)
        self.keys[key] = entry

    def remove(self, key: tuple[Any, Any]) -> None:
        entry = self.keys.pop(key, None)
        if entry is not None and self.kind is not _MIXED:
            i = bisect.bisect_left(self.order, entry)
            if i < len(self.order) and self.order[i][2] == key:
                del self.order[i]

    def span(self, comparison: str | None, operands: Any) -> tuple[int, int] | None:
        """The positions in :attr:`order` of the keys whose sort-key value meets the condition (all without one);
        None when there is no order to read them from."""
        if self.kind in (None, _MIXED):
            return None
        if not comparison:
            return 0, len(self.order)
        values = [o.cast_value for o in operands]
        if not values or any(type(v) is not self.kind for v in values):
            return None
        order, op, first = self.order, comparison.upper(), values[0]
        below, through = (first,), (first, _TOP)  # sorts before every entry of ``first``; after every one
        if op in ("EQ", "="):
            return bisect.bisect_left(order, below), bisect.bisect_right(order, through)
        if op in ("LT", "<"):
            return 0, bisect.bisect_left(order, below)
        if op in ("LE", "<="):
            return 0, bisect.bisect_right(order, through)
        if op in ("GT", ">"):
            return bisect.bisect_right(order, through), len(order)
        if op in ("GE", ">="):
            return bisect.bisect_left(order, below), len(order)
        if op == "BETWEEN" and len(values) == 2:
            return bisect.bisect_left(order, below), bisect.bisect_right(order, (values[1], _TOP))
        if op == "BEGINS_WITH" and self.kind in (str, bytes):
            lo = hi = bisect.bisect_left(order, below)
            while hi < len(order) and order[hi][0].startswith(first):
                hi += 1
            return lo, hi
        return None

    def window(self, comparison: str | None, operands: Any, *, limit: int | None,
               start: tuple[Any, tuple[Any, ...]] | None, forward: bool) -> list[tuple[Any, Any]] | None:
        """The keys a query reads, in order: those meeting the sort-key condition, after the exclusive start key
        ``start`` (its sort-key and table key values) in the query's direction, at most ``limit`` + 1 of them, and
        the neighbour on each side. moto's loop gives a page that reaches its limit a LastEvaluatedKey only when
        another item follows (the neighbour, or the next match), and skips what lies at or before ``start``, so the
        pages stay moto's. None when there is no order to read them from."""
        span = self.span(comparison, operands)
        if span is None:
            return None
        lo, hi = span
        order = self.order
        if start is not None:
            if forward:
                lo = max(lo, bisect.bisect_right(order, (*start, _TOP)))
            else:
                hi = min(hi, bisect.bisect_left(order, start))
        if limit is not None and lo < hi:
            if forward:
                hi = min(hi, lo + limit + 1)
            else:
                lo = max(lo, hi - limit - 1)
        return [entry[2] for entry in order[max(lo - 1, 0):hi + 1]]

    def start_of(self, key: dict[str, Any] | None, partition: dict[str, Any], sort_attr: str,
                 table_keys: tuple[str, ...]) -> tuple[Any, tuple[Any, ...]] | None:
        """An ExclusiveStartKey as a position in :attr:`order`; None when it names none: no key, an attribute
        missing, values of other types than the entries', or another index partition than ``partition`` (the
        queried index hash values; moto compares a start key's hash values first)."""
        if not key or not self.order or any(a not in key for a in (*partition, sort_attr, *table_keys)):
            return None
        try:
            if any(_cast(key[a]) != v or type(_cast(key[a])) is not type(v) for a, v in partition.items()):
                return None
            pos = (_cast(key[sort_attr]), tuple(_cast(key[a]) for a in table_keys))
        except Exception:  # noqa: BLE001 - a malformed key: moto answers it as before
            return None
        model = self.order[0]
        if type(pos[0]) is not type(model[0]) or [type(v) for v in pos[1]] != [type(v) for v in model[1]]:
            return None
        return pos


class _IndexBuckets:
    """A table's items grouped, per secondary index, by the index's hash key (fix 10 in the module docstring).

    ``buckets[index][hash values]`` is the index partition of the items whose index hash attributes have those
    values: what DynamoDB reads for an index query. Built from the table's items at its first write or index query,
    then kept up to date by every write (:func:`_resync` after ``Table.put_item``, ``Table.delete_item`` and the
    backend's ``update_item``, which changes an item in place). Rebuilt when the table's indexes change
    (``update_table``).
    """

    def __init__(self, table: Any) -> None:
        self.schema = _index_schema(table)
        self.spec = {name: (attrs, sort_attr) for name, attrs, sort_attr in self.schema}
        self.buckets: dict[str, dict[tuple[Any, ...], _Bucket]] = {n: {} for n, _, _ in self.schema}
        self.member: dict[tuple[Any, Any], list[tuple[str, tuple[Any, ...]]]] = {}
        for item in _unsorted_items(table):
            self.add(item)

    def add(self, item: Any) -> None:
        key = (item.hash_key, item.range_key)
        places = []
        for name, attrs, sort_attr in self.schema:
            values = tuple(item.attrs.get(a) for a in attrs)
            if all(v is not None for v in values):  # sparse: an item without the index's hash key is not in it
                bucket = self.buckets[name].setdefault(values, _Bucket())
                bucket.add(key, item.attrs.get(sort_attr) if sort_attr else None)
                places.append((name, values))
        if places:
            self.member[key] = places

    def remove(self, key: tuple[Any, Any]) -> None:
        for name, values in self.member.pop(key, ()):
            bucket = self.buckets[name].get(values)
            if bucket is not None:
                bucket.remove(key)
                if not bucket.keys:
                    del self.buckets[name][values]

    def candidates(self, table: Any, index_name: str, conditions: Any, range_conditions: Any,
                   comparison: str | None, operands: Any, *, limit: int | None = None,
                   exclusive_start_key: dict[str, Any] | None = None, forward: bool = True) -> list[Any] | None:
        """The items that can be on the query's page: those of its bucket, or (:meth:`_Bucket.window`) only the
        range a condition on the index's sort key selects, from the exclusive start key on, one page of it; None
        when the conditions do not name every hash attribute of the index (then moto walks the table, as before).
        moto applies every condition, the start key and the limit to them itself."""
        spec = self.spec.get(index_name)
        given = dict(conditions or ())
        if spec is None or any(a not in given for a in spec[0]):
            return None
        bucket = self.buckets[index_name].get(tuple(given[a] for a in spec[0]))
        if bucket is None:
            return []
        sort_attr = spec[1]
        # moto applies the condition to the last attribute of range_key_conditions, or to the index's sort key
        range_on = range_conditions[-1][0] if range_conditions else sort_attr
        keys = None
        if sort_attr is not None and range_on == sort_attr and len(range_conditions or ()) <= 1:
            table_keys = tuple(a for a in (table.hash_key_attr, table.range_key_attr) if a)
            start = bucket.start_of(exclusive_start_key, {a: given[a].cast_value for a in spec[0]}, sort_attr,
                                    table_keys)
            if exclusive_start_key and start is None:
                limit = None  # a start key that names no position: the whole range, moto finds its place
            keys = bucket.window(comparison, operands or (), limit=limit, start=start, forward=forward)
        found = (_stored(table, hash_key, range_key) for hash_key, range_key in (bucket.keys if keys is None else keys))
        return [item for item in found if item is not None]


def _index_schema(table: Any) -> tuple[tuple[str, tuple[str, ...], str | None], ...]:
    """Per index: its name, its hash attributes and its sort-key attribute (None for an index sorted by several:
    moto orders those by all of them, so no order is kept and the query reads the whole bucket)."""
    out = []
    for index in table.all_indexes():
        ranges = [k["AttributeName"] for k in index.schema if k["KeyType"] == "RANGE"]
        out.append((index.name, tuple(k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH"),
                    ranges[0] if len(ranges) == 1 else None))
    return tuple(out)


def _stored(table: Any, hash_key: Any, range_key: Any) -> Any:
    part = table.items.get(hash_key)  # .get: ``items`` is a defaultdict, and a lookup must not add a partition
    if part is None or not table.range_key_attr:
        return part
    return part.get(range_key)


def _buckets(table: Any) -> _IndexBuckets:
    buckets = getattr(table, "_radloop_buckets", None)
    if buckets is None or buckets.schema != _index_schema(table):
        buckets = table._radloop_buckets = _IndexBuckets(table)
    return buckets


def _resync(table: Any, hash_key: Any, range_key: Any) -> None:
    """After a write of one key: its index memberships are those of the item now stored under it (if any)."""
    if not table.all_indexes():
        return
    buckets = _buckets(table)  # the table's first write (or the first after its indexes changed) files every item
    buckets.remove((hash_key, range_key))
    item = _stored(table, hash_key, range_key)
    if item is not None:
        buckets.add(item)


def _patch_index_buckets() -> None:
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    put, delete, update = Table.put_item, Table.delete_item, DynamoDBBackend.update_item
    if getattr(put, "__radloop_buckets__", False):
        return

    def resync_key(table: Any, attrs: dict[str, Any]) -> None:
        """Re-file the item under the key that ``attrs`` (an item or a key) names; a key moto refused names none."""
        if table.hash_key_attr in attrs and (table.range_key_attr is None or table.range_key_attr in attrs):
            _resync(table, DynamoType(attrs[table.hash_key_attr]),
                    DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None)

    @functools.wraps(put)
    def put_item(self: Any, item_attrs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return put(self, item_attrs, *args, **kwargs)
        finally:
            resync_key(self, item_attrs)

    @functools.wraps(delete)
    def delete_item(self: Any, hash_key: Any, range_key: Any) -> Any:
        try:
            return delete(self, hash_key, range_key)
        finally:
            _resync(self, hash_key, range_key if self.range_key_attr else None)

    @functools.wraps(update)
    def update_item(self: DynamoDBBackend, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:  # moto changes the stored item in place (or puts a new one first, which put_item resyncs)
            return update(self, table_name, key, *args, **kwargs)
        finally:
            table = self.tables.get(table_name)
            if table is not None:
                resync_key(table, key)

    for fn in (put_item, delete_item, update_item):
        fn.__radloop_buckets__ = True  # type: ignore[attr-defined]
    Table.put_item = put_item  # type: ignore[method-assign]
    Table.delete_item = delete_item  # type: ignore[method-assign]
    DynamoDBBackend.update_item = update_item  # type: ignore[method-assign]


def _in_range(items: list[Any], comparison: str, operands: Any) -> list[Any]:
    """The items whose range key meets the condition, with the nearest other item below and above them."""
    inside = [i for i in items if i.range_key is not None and i.range_key.compare(comparison, operands)]
    if not inside:
        return []
    first, last = min(i.range_key for i in inside), max(i.range_key for i in inside)
    by_key = operator.attrgetter("range_key")
    below = max((i for i in items if i.range_key is not None and i.range_key < first), key=by_key, default=None)
    above = min((i for i in items if i.range_key is not None and last < i.range_key), key=by_key, default=None)
    return [i for i in (below, *inside, above) if i is not None]


def _patch_query() -> None:
    from moto.dynamodb.models.table import Table

    original = Table.query
    if getattr(original, "__radloop_partitioned__", False):
        return

    named = ("range_comparison", "range_objs", "limit", "exclusive_start_key", "scan_index_forward",
             "projection_expressions", "index_name", "consistent_read", "filter_expression", "hash_key_conditions",
             "range_key_conditions")

    @functools.wraps(original)
    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        a = dict(zip(named, args, strict=False)) | kwargs
        index_name, comparison, operands = a.get("index_name"), a.get("range_comparison"), a.get("range_objs")
        conditions = a.get("range_key_conditions")
        on_table_key = not conditions or conditions[-1][0] == self.range_key_attr
        if index_name:
            # the items under the queried index hash key that meet the sort-key condition, from the start key on,
            # one page of them (fix 10), or every item; moto sorts them and takes its page itself. A legacy
            # QueryFilter (keyword arguments outside ``named``) counts items differently: no page is cut for it.
            paged = not set(a) - set(named)
            found = _buckets(self).candidates(
                self, index_name, a.get("hash_key_conditions"), conditions, comparison, operands,
                limit=a.get("limit") if paged else None, exclusive_start_key=a.get("exclusive_start_key"),
                forward=a.get("scan_index_forward") is not False)
            self.all_items = (lambda: found) if found is not None else (lambda: _unsorted_items(self))
        elif hash_key is not None and comparison and on_table_key and self.range_key_attr:
            # Only the partition's items that meet the sort-key condition, and the nearest item on each side of
            # them: moto would sort all of them and size each one (Item.size() walks every attribute) before
            # skipping those that do not match; the neighbours keep its LastEvaluatedKey (see _Bucket.window).
            self.all_items = lambda: _in_range(_partition_items(self, hash_key), comparison, operands)
        elif hash_key is not None:
            self.all_items = lambda: _partition_items(self, hash_key)  # then sorted by range key, as before
        else:
            return original(self, hash_key, *args, **kwargs)
        try:  # under the backend lock (_LOCKED): no other request sees the instance attribute
            return original(self, hash_key, *args, **kwargs)
        finally:
            del self.all_items

    query.__radloop_partitioned__ = True  # type: ignore[attr-defined]
    Table.query = query  # type: ignore[method-assign]


class _Slow(Exception):  # noqa: N818 - a control-flow signal: this value takes moto's own serializer
    """An attribute value :func:`_wire_value` does not copy (binary, a missing or unexpected member)."""


def _wire_value(value: Any) -> dict[str, Any]:
    """What moto's JSON serializer makes of one DynamoDB ``AttributeValue`` that is already in wire form, without
    walking the shape's ten members for each value (fix 11): strings and numbers as ``str``, booleans and NULL as
    they are, sets and nested maps and lists member by member. Binary (base64 on the wire) and anything unexpected
    raise :class:`_Slow`, and moto serializes that value itself."""
    if type(value) is not dict or len(value) != 1:
        raise _Slow
    ((kind, inner),) = value.items()
    if inner is None:
        raise _Slow
    if kind in ("S", "N"):
        return {kind: str(inner)}
    if kind in ("BOOL", "NULL"):
        return {kind: inner}
    if kind in ("SS", "NS") and type(inner) is list and None not in inner:
        return {kind: [str(v) for v in inner]}
    if kind == "M" and type(inner) is dict:
        return {kind: {k: _wire_value(v) for k, v in inner.items()}}
    if kind == "L" and type(inner) is list:
        return {kind: [_wire_value(v) for v in inner]}
    raise _Slow


def _patch_attribute_values() -> None:
    from moto.core.serialize import BaseJSONSerializer

    original = BaseJSONSerializer._serialize_type_structure  # noqa: SLF001 - the method moto calls per structure
    if getattr(original, "__radloop_wire__", False):
        return

    @functools.wraps(original)
    def serialize_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if key and shape.name == "AttributeValue" and self.operation_model.service_model.service_name == "dynamodb":
            wire = None
            with contextlib.suppress(_Slow):  # binary or unexpected: moto's own serializer, below, writes it
                wire = _wire_value(value)
            if wire is not None:
                serialized[self.get_serialized_name(shape, key)] = wire
                return
        original(self, serialized, value, shape, key)

    serialize_structure.__radloop_wire__ = True  # type: ignore[attr-defined]
    BaseJSONSerializer._serialize_type_structure = serialize_structure  # type: ignore[method-assign]  # noqa: SLF001


#: An idle keep-alive connection's thread ends after this long (clients close theirs sooner: aiohttp after 15 s).
IDLE_TIMEOUT_S = 75.0
_NO_BODY_STATUS = frozenset({204, 304})


class KeepAliveHandler(MotoRequestHandler):
    """moto's request handler, with HTTP/1.1 keep-alive (fix 9 in the module docstring).

    The response is built in memory (moto's responses are) and sent with its length; the request body's unread
    remainder is read before the next request line. Anything this cannot frame exactly goes to werkzeug's
    ``run_wsgi``, which closes the connection afterwards.
    """

    timeout = IDLE_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; with Nagle's algorithm the second waits for the client's delayed
        # ACK of the first (40 ms) once the connection is kept alive (closing it used to flush both at once).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _framed_length(self) -> int | None:
        """The request body's length when this request can be served on a kept-alive connection, else None."""
        if self.request_version != "HTTP/1.1" or self.headers.get("Transfer-Encoding"):
            return None
        if "close" in self.headers.get("Connection", "").lower():
            return None
        raw = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw.isdigit():
            return None
        return int(raw)

    def run_wsgi(self) -> None:
        length = self._framed_length()
        if length is None:
            super().run_wsgi()
            return
        # http.server's parse_request already answered ``Expect: 100-continue`` (HTTP/1.1 on both sides).
        self.environ = environ = self.make_environ()
        body = LimitedStream(self.rfile, length)
        environ["wsgi.input"] = body
        environ["wsgi.input_terminated"] = True
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., None]:
            started[:] = [status, headers]
            return chunks.append

        chunks: list[bytes] = []
        try:
            result = self.server.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            body.exhaust()  # the next request starts after this one's body, read or not
        except Exception:
            logging.getLogger("werkzeug").exception("Error on request %s %s", self.command, self.path)
            self.close_connection = True
            self.send_response(500, "Internal Server Error")
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            return
        status, headers = started
        code_str, _, reason = status.partition(" ")
        code = int(code_str)
        data = b"".join(chunks)
        bodiless = self.command == "HEAD" or code < 200 or code in _NO_BODY_STATUS
        self.send_response(code, reason)
        for key, value in headers:
            k = key.lower()
            # A HEAD answer keeps the length of the body it describes (S3 HeadObject); others get the real one.
            if k in ("connection", "transfer-encoding", "keep-alive") or (k == "content-length" and not bodiless):
                continue
            self.send_header(key, value)
        if not bodiless:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not bodiless and data:
            self.wfile.write(data)
        self.wfile.flush()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Patch 13: the line is formatted only when the logger would write it (patch() sets it to WARNING).
        if logging.getLogger("werkzeug").isEnabledFor(logging.INFO):
            super().log_request(code, size)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        # An idle connection reaching IDLE_TIMEOUT_S is normal, not an error worth a log line.
        if format.startswith("Request timed out"):
            return
        super().log_error(format, *args)


#: Expression texts whose parse is remembered (patch 12), per kind.
PARSED_EXPRESSIONS = 1024


def _patch_expression_parsing() -> None:
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    lex = ConditionExpressionParser._lex_condition_expression
    if getattr(lex, "__radloop_cached__", False):
        return

    @functools.lru_cache(maxsize=PARSED_EXPRESSIONS)
    def tokens(expression: str) -> tuple[Any, ...]:
        # Nodes are named tuples, and no later stage changes a token's (empty) children: they can be shared.
        return tuple(lex(ConditionExpressionParser(expression, None, None)))

    @functools.wraps(lex)
    def _lex_condition_expression(self: Any) -> deque[Any]:
        return deque(tokens(self.condition_expression))

    _lex_condition_expression.__radloop_cached__ = True  # type: ignore[attr-defined]
    _lex_condition_expression.cache_info = tokens.cache_info  # type: ignore[attr-defined]
    ConditionExpressionParser._lex_condition_expression = _lex_condition_expression  # type: ignore[method-assign]

    make = UpdateExpressionParser.make.__func__  # type: ignore[attr-defined]

    @functools.lru_cache(maxsize=PARSED_EXPRESSIONS)
    def tree(expression: str) -> Any:
        return make(UpdateExpressionParser, expression)

    @functools.wraps(make)
    def make_once(cls: type, expression_str: str) -> Any:
        # Shared trees are read (find_clauses) or deep-copied (the validator) by moto, never changed.
        return tree(expression_str) if cls is UpdateExpressionParser else make(cls, expression_str)

    make_once.cache_info = tree.cache_info  # type: ignore[attr-defined]
    UpdateExpressionParser.make = classmethod(make_once)  # type: ignore[method-assign,assignment]


def _patch_debug_mode() -> None:
    import moto.moto_server.werkzeug_app as werkzeug_app
    import moto.server

    create = werkzeug_app.create_backend_app
    if getattr(create, "__radloop_no_debug__", False):
        return

    @functools.wraps(create)
    def create_backend_app(*args: Any, **kwargs: Any) -> Any:
        app = create(*args, **kwargs)
        app.debug = False  # patch 13
        return app

    create_backend_app.__radloop_no_debug__ = True  # type: ignore[attr-defined]
    werkzeug_app.create_backend_app = create_backend_app
    moto.server.create_backend_app = create_backend_app  # type: ignore[attr-defined]


def _patch_keep_alive() -> None:
    import moto.server

    moto.server.MotoRequestHandler = KeepAliveHandler  # type: ignore[misc]


def patch() -> None:
    """Apply the fixes (idempotent)."""
    _patch_keep_alive()
    _patch_debug_mode()
    _patch_query()
    _patch_index_buckets()
    _patch_sqs_send()
    _patch_sqs_walks()
    _patch_routing()
    _patch_jsonpath()
    _patch_sqs_retention()
    _patch_attribute_values()
    _patch_expression_parsing()
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
