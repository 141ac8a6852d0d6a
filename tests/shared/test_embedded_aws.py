"""The embedded endpoint's DynamoDB fixes (radloop.local.moto_server), against the real moto server process."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError


@pytest.fixture
def table(aws_endpoint: str) -> tuple[object, str]:
    # No retries: a server error must surface, not be hidden by the client's retry.
    ddb = boto3.client("dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1",
                       config=Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=20))
    name = f"emb-{uuid.uuid4().hex[:8]}"
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                           {"AttributeName": "g", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     GlobalSecondaryIndexes=[{"IndexName": "by-g", "KeySchema": [{"AttributeName": "g",
                                                                                     "KeyType": "HASH"}],
                                              "Projection": {"ProjectionType": "ALL"}}])
    return ddb, name


def test_a_cancelled_transaction_restores_exactly_what_it_touched(table) -> None:
    ddb, name = table
    ddb.put_item(TableName=name, Item={"pk": {"S": "b"}, "n": {"N": "1"}, "g": {"S": "old"}})
    ddb.put_item(TableName=name, Item={"pk": {"S": "c"}, "n": {"N": "7"}})
    with pytest.raises(ClientError) as info:
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": name, "Item": {"pk": {"S": "a"}, "g": {"S": "new"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Update": {"TableName": name, "Key": {"pk": {"S": "b"}}, "UpdateExpression": "SET n = :two, g = :g",
                        "ExpressionAttributeValues": {":two": {"N": "2"}, ":g": {"S": "new"}}}},
            {"Delete": {"TableName": name, "Key": {"pk": {"S": "c"}}}},
            {"ConditionCheck": {"TableName": name, "Key": {"pk": {"S": "nope"}},
                                "ConditionExpression": "attribute_exists(pk)"}},
        ])
    assert info.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = [r.get("Code") for r in info.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "None", "ConditionalCheckFailed"]
    items = {i["pk"]["S"]: i for i in ddb.scan(TableName=name)["Items"]}
    assert set(items) == {"b", "c"}  # the Put was undone, the Delete restored
    assert items["b"]["n"] == {"N": "1"} and items["c"]["n"] == {"N": "7"}
    # the secondary index follows the restored items
    assert [i["pk"]["S"] for i in ddb.query(TableName=name, IndexName="by-g", KeyConditionExpression="g = :g",
                                            ExpressionAttributeValues={":g": {"S": "old"}})["Items"]] == ["b"]
    assert ddb.query(TableName=name, IndexName="by-g", KeyConditionExpression="g = :g",
                     ExpressionAttributeValues={":g": {"S": "new"}})["Items"] == []


def test_a_committed_transaction_applies_every_item(table) -> None:
    ddb, name = table
    ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": name, "Item": {"pk": {"S": f"k{i}"}, "g": {"S": "x"}}}} for i in range(5)])
    assert len(ddb.scan(TableName=name)["Items"]) == 5


def test_concurrent_conditional_writes_on_one_key_let_exactly_one_win(table) -> None:
    ddb, name = table

    def claim(i: int) -> bool:
        try:
            ddb.put_item(TableName=name, Item={"pk": {"S": "claim"}, "owner": {"S": str(i)}},
                         ConditionExpression="attribute_not_exists(pk)")
            return True
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
            return False

    for _ in range(5):  # several rounds: a race that only sometimes happens still shows
        ddb.delete_item(TableName=name, Key={"pk": {"S": "claim"}})
        with ThreadPoolExecutor(16) as pool:
            wins = list(pool.map(claim, range(16)))
        assert sum(wins) == 1


def test_transactions_racing_writes_never_fail_with_a_server_error(table) -> None:
    ddb, name = table
    for i in range(200):
        ddb.put_item(TableName=name, Item={"pk": {"S": f"bulk{i}"}, "g": {"S": "b"}})

    def txn(i: int) -> None:
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": name, "Item": {"pk": {"S": f"t{i}"}, "g": {"S": "t"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Update": {"TableName": name, "Key": {"pk": {"S": "counter"}}, "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}}])

    def put(i: int) -> None:
        ddb.put_item(TableName=name, Item={"pk": {"S": f"p{i}"}, "g": {"S": "p"}})

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda i: txn(i) if i % 2 else put(i), range(120)))
    counter = ddb.get_item(TableName=name, Key={"pk": {"S": "counter"}}, ConsistentRead=True)["Item"]
    assert counter["n"] == {"N": "60"}  # every transaction applied once, none lost to a 500 and a retry


def test_sqs_retention_is_read_directly_and_still_expires_old_messages() -> None:
    """Patch 5: the retention check reads the queue's period instead of computing every attribute; same answers."""

    from moto.sqs.models import Message, SQSBackend

    from radloop.local import moto_server

    moto_server.patch()
    moto_server.patch()  # idempotent
    backend = SQSBackend("us-east-1", "123456789012")
    backend.create_queue("retention-q", MessageRetentionPeriod="60")
    fresh, old = Message("m1", "fresh"), Message("m2", "old")
    fresh.mark_sent()
    old.sent_timestamp = int((time.time() - 61) * 1000)
    assert backend.is_message_valid_based_on_retention_period("retention-q", fresh)
    assert not backend.is_message_valid_based_on_retention_period("retention-q", old)


def test_the_routing_and_jsonpath_caches_give_moto_s_answers(aws_endpoint: str) -> None:
    """Patches 3 and 4, through the real server: each service still reaches its own backend, and an EventBridge rule
    still delivers the event (through the cached default input paths) to its SQS target, more than once."""
    import json

    kw = {"endpoint_url": aws_endpoint, "region_name": "us-east-1"}
    name = f"emb-{uuid.uuid4().hex[:8]}"
    sqs, events, s3 = boto3.client("sqs", **kw), boto3.client("events", **kw), boto3.client("s3", **kw)
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"v")
    assert s3.get_object(Bucket=name, Key="k")["Body"].read() == b"v"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.create_event_bus(Name=name)
    events.put_rule(Name=name, EventBusName=name, EventPattern=json.dumps({"source": ["radloop.test"]}))
    events.put_targets(Rule=name, EventBusName=name, Targets=[{"Id": "q", "Arn": arn}])
    for i in range(3):
        events.put_events(Entries=[{"Source": "radloop.test", "DetailType": "T", "Detail": json.dumps({"i": i}),
                                    "EventBusName": name}])
    got = []
    for _ in range(10):
        got += [json.loads(m["Body"])["detail"]["i"] for m in
                sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])]
        if len(got) == 3:
            break
    assert sorted(got) == [0, 1, 2]


def _query_battery(ddb: object) -> list[object]:
    """Every page of a set of queries: table and index, both orders, range conditions, filters, small pages."""
    ddb.create_table(  # type: ignore[attr-defined]
        TableName="t", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "g", "gs")]
        + [{"AttributeName": "n", "AttributeType": "N"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {"IndexName": "g-gs", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"},
                                                {"AttributeName": "gs", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "ALL"}},
            {"IndexName": "g-only", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
             "Projection": {"ProjectionType": "KEYS_ONLY"}},
            {"IndexName": "g-n", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"},
                                               {"AttributeName": "n", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "ALL"}}])
    ddb.create_table(  # type: ignore[attr-defined]
        TableName="h", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "g", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[{"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "ALL"}}])
    for i in range(240):
        item = {"pk": {"S": f"p{i % 7}"}, "sk": {"S": f"s{(i * 37) % 240:04d}"}, "n": {"N": str(i % 11)}}
        if i % 3:  # a sparse index: a third of the items are not in it
            item |= {"g": {"S": f"g{i % 4}"}, "gs": {"S": f"x{(i * 13) % 97:03d}"}}
        ddb.put_item(TableName="t", Item=item)  # type: ignore[attr-defined]
        ddb.put_item(TableName="h", Item={"pk": {"S": f"k{i}"}, "g": {"S": f"g{i % 5}"}})  # type: ignore[attr-defined]
    queries = [
        {"TableName": "t", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "p3"}}},
        {"TableName": "t", "KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b", "ScanIndexForward": False,
         "ExpressionAttributeValues": {":p": {"S": "p1"}, ":a": {"S": "s0040"}, ":b": {"S": "s0200"}}},
        {"TableName": "t", "KeyConditionExpression": "pk = :p AND begins_with(sk, :s)", "FilterExpression": "n > :n",
         "ExpressionAttributeValues": {":p": {"S": "p2"}, ":s": {"S": "s01"}, ":n": {"N": "4"}}},
        {"TableName": "t", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "nope"}}},
        {"TableName": "t", "IndexName": "g-gs", "KeyConditionExpression": "g = :g",
         "ExpressionAttributeValues": {":g": {"S": "g1"}}},
        {"TableName": "t", "IndexName": "g-gs", "KeyConditionExpression": "g = :g AND gs > :x", "ScanIndexForward": False,
         "ExpressionAttributeValues": {":g": {"S": "g2"}, ":x": {"S": "x040"}}},
        {"TableName": "t", "IndexName": "g-only", "KeyConditionExpression": "g = :g",
         "ExpressionAttributeValues": {":g": {"S": "g3"}}},
        *({"TableName": "t", "IndexName": "g-gs", "KeyConditionExpression": f"g = :g AND {cond}",
           "ExpressionAttributeValues": {":g": {"S": "g1"}, ":a": {"S": a}} | ({":b": {"S": b}} if b else {})}
          for cond, a, b in (("begins_with(gs, :a)", "x0", None), ("gs BETWEEN :a AND :b", "x020", "x060"),
                             ("gs <= :a", "x050", None), ("gs < :a", "x050", None), ("gs >= :a", "x050", None),
                             ("gs = :a", "x013", None), ("begins_with(gs, :a)", "x5", None))),
        *({"TableName": "t", "IndexName": "g-n", "KeyConditionExpression": f"g = :g AND {cond}",
           "ScanIndexForward": forward,  # many items share each value: ties ordered by the table's keys
           "ExpressionAttributeValues": {":g": {"S": "g2"}, ":a": {"N": a}} | ({":b": {"N": b}} if b else {})}
          for cond, a, b, forward in (("n BETWEEN :a AND :b", "2", "5", True), ("n < :a", "3", None, False),
                                      ("n = :a", "4", None, True), ("n > :a", "9.5", None, True))),
        {"TableName": "h", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "k17"}}},
        {"TableName": "h", "IndexName": "by-g", "KeyConditionExpression": "g = :g",
         "ExpressionAttributeValues": {":g": {"S": "g4"}}},
    ]
    pages = _pages(ddb, queries)
    _mutate(ddb)
    pages += _pages(ddb, queries)
    ddb.update_table(  # type: ignore[attr-defined]
        TableName="t", AttributeDefinitions=[{"AttributeName": "gs", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[{"Create": {"IndexName": "gs-new", "KeySchema": [{"AttributeName": "gs",
                                                                                       "KeyType": "HASH"}],
                                                 "Projection": {"ProjectionType": "ALL"}}}])
    queries.append({"TableName": "t", "IndexName": "gs-new", "KeyConditionExpression": "gs = :x",
                    "ExpressionAttributeValues": {":x": {"S": "x013"}}})
    pages += _pages(ddb, queries)
    ddb.update_item(TableName="t", Key={"pk": {"S": "p9"}, "sk": {"S": "tx"}},  # type: ignore[attr-defined]
                    UpdateExpression="SET gs = :x", ExpressionAttributeValues={":x": {"S": "x013"}})
    return pages + _pages(ddb, queries)


def _mutate(ddb: object) -> None:
    """Writes that move items into, out of and between index buckets, by every path that writes an item."""
    t = {"TableName": "t"}
    key = lambda i: {"pk": {"S": f"p{i % 7}"}, "sk": {"S": f"s{(i * 37) % 240:04d}"}}  # noqa: E731
    upd = ddb.update_item  # type: ignore[attr-defined]
    upd(**t, Key=key(3), UpdateExpression="SET g = :g, gs = :s",  # not indexed before (3 % 3 == 0): now in g1
        ExpressionAttributeValues={":g": {"S": "g1"}, ":s": {"S": "x500"}})
    upd(**t, Key=key(4), UpdateExpression="REMOVE g")  # leaves both indexes
    upd(**t, Key=key(5), UpdateExpression="SET g = :g", ExpressionAttributeValues={":g": {"S": "g3"}})  # g1 -> g3
    upd(**t, Key={"pk": {"S": "p9"}, "sk": {"S": "new"}}, UpdateExpression="SET g = :g, gs = :s",  # a new item
        ExpressionAttributeValues={":g": {"S": "g2"}, ":s": {"S": "x041"}})
    ddb.put_item(**t, Item=key(7) | {"g": {"S": "g3"}, "gs": {"S": "x001"}})  # type: ignore[attr-defined]
    ddb.delete_item(**t, Key=key(8))  # type: ignore[attr-defined]
    with pytest.raises(ClientError, match="TransactionCanceled"):  # rolled back: nothing moves
        ddb.transact_write_items(TransactItems=[  # type: ignore[attr-defined]
            {"Update": {**t, "Key": key(10), "UpdateExpression": "SET g = :g",
                        "ExpressionAttributeValues": {":g": {"S": "g0"}}}},
            {"Delete": {**t, "Key": key(11)}},
            {"ConditionCheck": {**t, "Key": key(13), "ConditionExpression": "attribute_not_exists(pk)"}}])
    ddb.transact_write_items(TransactItems=[  # type: ignore[attr-defined]
        {"Update": {**t, "Key": key(10), "UpdateExpression": "SET g = :g",
                    "ExpressionAttributeValues": {":g": {"S": "g0"}}}},
        {"Delete": {**t, "Key": key(11)}},
        {"Put": {**t, "Item": {"pk": {"S": "p9"}, "sk": {"S": "tx"}, "g": {"S": "g0"}, "gs": {"S": "x000"}}}}])
    ddb.batch_write_item(RequestItems={  # type: ignore[attr-defined]
        "t": [{"DeleteRequest": {"Key": key(14)}}, {"PutRequest": {"Item": key(15) | {"g": {"S": "g2"}}}}],
        "h": [{"PutRequest": {"Item": {"pk": {"S": "k3"}, "g": {"S": "g0"}}}},
              {"DeleteRequest": {"Key": {"pk": {"S": "k4"}}}}]})


def _pages(ddb: object, queries: list[dict[str, object]]) -> list[object]:
    pages: list[object] = []
    for q in queries:
        for limit in (None, 1, 7):
            start = None
            for _ in range(300):  # bounded: at most 250 items in pages of 1
                kw = dict(q) | ({"Limit": limit} if limit else {}) | ({"ExclusiveStartKey": start} if start else {})
                resp = ddb.query(**kw)  # type: ignore[attr-defined]
                pages.append((resp["Items"], resp["Count"], resp["ScannedCount"], resp.get("LastEvaluatedKey")))
                start = resp.get("LastEvaluatedKey")
                if not start:
                    break
    return pages


def _unpatched_and_patched(monkeypatch: pytest.MonkeyPatch, owner: type, name: str,
                           run: Callable[[], list[object]]) -> tuple[list[object], list[object]]:
    """``run()``'s answers on a fresh mock AWS with moto's own ``owner.name`` (``__wrapped__``), then with the patch."""
    from moto import mock_aws

    patched = getattr(owner, name)
    got = []
    for fn in (patched.__wrapped__, patched):
        monkeypatch.setattr(owner, name, fn)
        with mock_aws():
            got.append(run())
    return got[0], got[1]


def test_a_query_reads_its_partition_and_gives_moto_s_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patches 6 and 10: a table query starts from its partition and an index query from its bucket; every page
    (items, counts, order, LastEvaluatedKey), before and after writes that move items between buckets, equals moto's
    own, and neither lists the table."""
    from moto import mock_aws
    from moto.dynamodb.models.table import Table

    from radloop.local import moto_server

    moto_server.patch()
    patched = Table.query
    assert patched.__radloop_partitioned__  # type: ignore[attr-defined]
    answers = _unpatched_and_patched(monkeypatch, Table, "query",
                                     lambda: _query_battery(boto3.client("dynamodb", region_name="us-east-1")))
    assert len(answers[0]) > 20 and answers[0] == answers[1]

    listed = []
    real_all_items = Table.all_items
    monkeypatch.setattr(Table, "all_items", lambda self: listed.append(self.name) or real_all_items(self))
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        _query_battery(ddb)
        listed.clear()
        ddb.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "p3"}})
    assert listed == []  # the class's all_items (list and sort every item) was not called

    walked: list[object] = []  # fix 10: an index query reads its bucket, not every item of the table
    real_unsorted = moto_server._unsorted_items
    monkeypatch.setattr(moto_server, "_unsorted_items", lambda table: walked.append(table) or real_unsorted(table))
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        _query_battery(ddb)
        assert walked  # the buckets were built from the items, once per table and set of indexes
        walked.clear()
        resp = ddb.query(TableName="t", IndexName="g-gs", KeyConditionExpression="g = :g",
                         ExpressionAttributeValues={":g": {"S": "g0"}})
        ddb.put_item(TableName="t", Item={"pk": {"S": "p1"}, "sk": {"S": "late"}, "g": {"S": "g0"}, "gs": {"S": "z"}})
        again = ddb.query(TableName="t", IndexName="g-gs", KeyConditionExpression="g = :g",
                          ExpressionAttributeValues={":g": {"S": "g0"}})
    assert walked == [] and again["Count"] == resp["Count"] + 1 and again["Items"][-1]["sk"] == {"S": "late"}

    from moto.dynamodb.models.dynamo_type import Item

    sized: list[object] = []
    real_size = Item.size
    monkeypatch.setattr(Item, "size", lambda self: sized.append(self) or real_size(self))
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        _query_battery(ddb)
        sized.clear()
        resp = ddb.query(TableName="t", KeyConditionExpression="pk = :p AND begins_with(sk, :s)",
                         ExpressionAttributeValues={":p": {"S": "p2"}, ":s": {"S": "s01"}})
    in_partition = 240 // 7
    assert 0 < resp["Count"] < in_partition // 2
    # only the items that meet the sort-key condition were sized (twice each: the page limit, the page's size),
    # and the neighbour on each side once (it decides the LastEvaluatedKey); moto sized every item of the partition
    # before skipping the others
    assert len(sized) == 2 * resp["Count"] + 2, (len(sized), resp["Count"])

    # an index query with a Limit hands moto one page of its bucket (and the items around it), from
    # its ExclusiveStartKey on, in either direction: moto sorted the whole bucket for each page
    handed: list[int] = []
    real_sorted = Table.sorted_items
    monkeypatch.setattr(Table, "sorted_items", lambda self, h, r, items: handed.append(len(items))
                        or real_sorted(self, h, r, items))
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        _query_battery(ddb)
        for forward in (True, False):
            handed.clear()
            q = {"TableName": "t", "IndexName": "g-n", "KeyConditionExpression": "g = :g", "Limit": 5,
                 "ExpressionAttributeValues": {":g": {"S": "g2"}}, "ScanIndexForward": forward}
            first = ddb.query(**q)
            second = ddb.query(**q, ExclusiveStartKey=first["LastEvaluatedKey"])
            whole = ddb.query(**{k: v for k, v in q.items() if k != "Limit"})
            assert first["Items"] + second["Items"] == whole["Items"][:10] and whole["Count"] > 30
            # each page: its 5, the next (it decides the LastEvaluatedKey), and a neighbour on each side
            assert len(handed) == 3 and max(handed[:2]) <= 5 + 3 and handed[2] == whole["Count"], handed


def test_pages_of_indexes_moto_orders_otherwise_are_moto_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of patch 10's pages (session 20): an index sorted by two attributes is ordered by both, and a start key
    of another index partition is placed by moto first by its hash value; for both, no page is cut and moto's
    answers stand (the first page and the page after the start key differed before the fix)."""
    from moto.dynamodb.models.table import Table

    from radloop.local import moto_server

    moto_server.patch()

    def answers() -> list[object]:
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName="m", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "g", "r1", "r2")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {"IndexName": "two", "Projection": {"ProjectionType": "ALL"},
                 "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}, {"AttributeName": "r1", "KeyType": "RANGE"},
                               {"AttributeName": "r2", "KeyType": "RANGE"}]},
                {"IndexName": "one", "Projection": {"ProjectionType": "ALL"},
                 "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}, {"AttributeName": "r2", "KeyType": "RANGE"}]}])
        for pk, g, r2 in (("a", "g", "z"), ("b", "g", "y"), ("c", "g", "x"), ("d", "g", "w"), ("e", "a", "v")):
            ddb.put_item(TableName="m", Item={"pk": {"S": pk}, "g": {"S": g}, "r1": {"S": "same"}, "r2": {"S": r2}})
        out = []
        for forward in (True, False):
            two = {"TableName": "m", "IndexName": "two", "KeyConditionExpression": "g = :g", "Limit": 1,
                   "ExpressionAttributeValues": {":g": {"S": "g"}}, "ScanIndexForward": forward}
            out.append(ddb.query(**two))
            out.append(ddb.query(**two | {"Limit": 2}, ExclusiveStartKey={"pk": {"S": "c"}, "g": {"S": "g"},
                                                                       "r1": {"S": "same"}, "r2": {"S": "x"}}))
            one = {"TableName": "m", "IndexName": "one", "KeyConditionExpression": "g = :g", "Limit": 2,
                   "ExpressionAttributeValues": {":g": {"S": "g"}}, "ScanIndexForward": forward}
            out.append(ddb.query(**one, ExclusiveStartKey={"pk": {"S": "e"}, "g": {"S": "a"}, "r2": {"S": "x"}}))
        return [(r["Items"], r["Count"], r["ScannedCount"], r.get("LastEvaluatedKey")) for r in out]

    got = _unpatched_and_patched(monkeypatch, Table, "query", answers)
    assert got[0] == got[1]
    assert [item["pk"]["S"] for item in got[0][0][0]] == ["d"]  # ordered by r2 among the ties of r1


def test_attribute_values_are_written_as_moto_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch 11: DynamoDB answers copy attribute values that are already in wire form instead of walking the
    AttributeValue shape's ten members for each; every kind of value (nested maps and lists, sets, numbers, binary,
    which still takes moto's path) reads back the same as through moto's own serializer, in GetItem, Query, Scan and
    BatchGetItem."""
    from moto.core.serialize import BaseJSONSerializer

    from radloop.local import moto_server

    moto_server.patch()
    patched = BaseJSONSerializer._serialize_type_structure
    assert patched.__radloop_wire__  # type: ignore[attr-defined]
    item = {
        "pk": {"S": "p"}, "sk": {"S": "0"}, "s": {"S": "ünïcode \" quote"}, "n": {"N": "-12.50"}, "big": {"N": "1e30"},
        "t": {"BOOL": True}, "f": {"BOOL": False}, "null": {"NULL": True}, "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2.5"]}, "b": {"B": b"\x00\xffbin"}, "bs": {"BS": [b"x", b"\x01"]},
        "m": {"M": {"inner": {"S": "v"}, "deeper": {"M": {"l": {"L": [{"N": "1"}, {"S": "two"}, {"NULL": True}]}}},
                    "empty": {"M": {}}, "bin": {"B": b"in a map"}}},
        "l": {"L": [{"M": {"k": {"S": "v"}}}, {"L": []}, {"BOOL": False}, {"SS": ["z"]}]},
    }

    def answers() -> list[object]:
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(TableName="v", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "sk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}])
        for i in range(3):
            ddb.put_item(TableName="v", Item=item | {"sk": {"S": str(i)}})
        key = {"pk": {"S": "p"}, "sk": {"S": "1"}}
        return [ddb.get_item(TableName="v", Key=key)["Item"],
                ddb.query(TableName="v", KeyConditionExpression="pk = :p",
                          ExpressionAttributeValues={":p": {"S": "p"}})["Items"],
                ddb.scan(TableName="v")["Items"],
                ddb.batch_get_item(RequestItems={"v": {"Keys": [key]}})["Responses"]["v"],
                ddb.update_item(TableName="v", Key=key, UpdateExpression="SET n = :n", ReturnValues="ALL_NEW",
                                ExpressionAttributeValues={":n": {"N": "7"}})["Attributes"]]

    got = _unpatched_and_patched(monkeypatch, BaseJSONSerializer, "_serialize_type_structure", answers)
    assert got[0] == got[1]
    assert got[1][0] == item | {"sk": {"S": "1"}}  # and what was put is what is read
    assert moto_server._wire_value({"M": {"a": {"S": "x"}}}) == {"M": {"a": {"S": "x"}}}
    with pytest.raises(moto_server._Slow):  # binary anywhere inside: moto's own path
        moto_server._wire_value({"L": [{"S": "x"}, {"B": "AAE="}]})


def _write_battery(ddb: Any) -> list[object]:
    """Conditional puts, updates, deletes and transactions, each twice, that succeed, fail their condition or are
    refused as invalid; every answer (or error code and message) and the table afterwards."""

    ddb.create_table(TableName="w", BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                           {"AttributeName": "sk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
    out: list[object] = []

    def call(op: str, **kw: Any) -> None:
        try:
            r = getattr(ddb, op)(**({"TableName": "w"} | kw if op != "transact_write_items" else kw))
            r.pop("ResponseMetadata", None)
            out.append((op, r))
        except ClientError as exc:
            err = exc.response.get("Error", {})
            out.append((op, err.get("Code"), err.get("Message"), exc.response.get("CancellationReasons")))

    def key(i: int) -> dict[str, Any]:
        return {"pk": {"S": "p"}, "sk": {"S": str(i)}}

    for _ in range(2):
        for i in range(3):
            call("put_item", Item=key(i) | {"n": {"N": str(i)}, "tags": {"L": [{"S": "a"}]}, "state": {"S": "new"}},
                 ConditionExpression="attribute_not_exists(pk)")
        call("put_item", Item=key(0), ConditionExpression="attribute_not_exists(pk) OR #s = :old",
             ExpressionAttributeNames={"#s": "state"}, ExpressionAttributeValues={":old": {"S": "new"}})
        call("update_item", Key=key(1), ReturnValues="ALL_NEW",
             UpdateExpression="SET #s = :s, tags = list_append(tags, :t), seen = if_not_exists(seen, :z) ADD n :one",
             ConditionExpression="attribute_exists(pk) AND (n < :ten OR contains(tags, :a)) AND NOT #s IN (:x, :y)",
             ExpressionAttributeNames={"#s": "state"},
             ExpressionAttributeValues={":s": {"S": "read"}, ":t": {"L": [{"S": "b"}]}, ":z": {"N": "0"},
                                        ":one": {"N": "1"}, ":ten": {"N": "10"}, ":a": {"S": "a"},
                                        ":x": {"S": "gone"}, ":y": {"S": "held"}})
        call("update_item", Key=key(2), UpdateExpression="REMOVE tags SET n = n + :one",
             ConditionExpression="size(tags) > :big", ExpressionAttributeValues={":one": {"N": "1"}, ":big": {"N": "5"}})
        call("update_item", Key=key(9), UpdateExpression="SET n = :one", ConditionExpression="n BETWEEN :one AND :one",
             ExpressionAttributeValues={":one": {"N": "1"}})
        call("update_item", Key=key(1), UpdateExpression="SET n = ", ExpressionAttributeValues={":one": {"N": "1"}})
        call("update_item", Key=key(1), UpdateExpression="SET n = :nope")
        call("put_item", Item=key(5), ConditionExpression="attribute_not_exists(name)")
        call("delete_item", Key=key(2), ConditionExpression="begins_with(#s, :n)",
             ExpressionAttributeNames={"#s": "state"}, ExpressionAttributeValues={":n": {"S": "ne"}})
        call("transact_write_items", TransactItems=[
            {"Put": {"TableName": "w", "Item": key(3), "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Update": {"TableName": "w", "Key": key(1), "UpdateExpression": "ADD n :one",
                        "ConditionExpression": "attribute_exists(pk)", "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"ConditionCheck": {"TableName": "w", "Key": key(0), "ConditionExpression": "#s = :s",
                                "ExpressionAttributeNames": {"#s": "state"},
                                "ExpressionAttributeValues": {":s": {"S": "new"}}}},
        ])
        out.append(sorted(ddb.scan(TableName="w")["Items"], key=lambda it: it["sk"]["S"]))
    return out


def test_expressions_parsed_once_give_moto_s_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch 12: a condition's tokens and an update expression's syntax tree are remembered per expression text; a
    battery of writes that succeed, fail their conditions or are invalid gives moto's own answers, errors and table,
    with the second round of the same expressions parsed from memory."""
    from moto import mock_aws
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    from radloop.local import moto_server

    moto_server.patch()
    lex, make = ConditionExpressionParser._lex_condition_expression, UpdateExpressionParser.make.__func__
    assert lex.__radloop_cached__  # type: ignore[attr-defined]
    got = []
    for lex_fn, make_fn in ((lex.__wrapped__, make.__wrapped__), (lex, make)):  # type: ignore[attr-defined]
        monkeypatch.setattr(ConditionExpressionParser, "_lex_condition_expression", lex_fn)
        monkeypatch.setattr(UpdateExpressionParser, "make", classmethod(make_fn))
        with mock_aws():
            got.append(_write_battery(boto3.client("dynamodb", region_name="us-east-1")))
    assert got[0] == got[1]
    codes = [a[1] for a in got[1] if isinstance(a, tuple) and len(a) == 4]
    assert {"ConditionalCheckFailedException", "ValidationException", "TransactionCanceledException"} <= set(codes)
    assert sum(a[0] == "update_item" and len(a) == 2 for a in got[1] if isinstance(a, tuple)) >= 1  # one succeeded
    assert lex.cache_info().hits > 10 and make.cache_info().hits > 5  # type: ignore[attr-defined]


def test_sending_a_message_does_not_count_the_queue_and_gives_moto_s_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch 7: send_message reads ContentBasedDeduplication without walking every queued message; FIFO queues still
    deduplicate by content, and GetQueueAttributes still counts."""
    from moto.sqs.models import Queue, SQSBackend

    from radloop.local import moto_server

    moto_server.patch()
    moto_server.patch()  # idempotent
    counted = []
    real = Queue.approximate_number_of_messages
    monkeypatch.setattr(Queue, "approximate_number_of_messages",
                        property(lambda self: counted.append(self.name) or real.fget(self)))
    backend = SQSBackend("us-east-1", "123456789012")
    backend.create_queue("std-q")
    backend.create_queue("dedup-q.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    for _ in range(3):
        backend.send_message("std-q", "same body")
        backend.send_message("dedup-q.fifo", "same body", group_id="g")
    assert counted == []  # no walk of the queue per message sent
    attrs = backend.get_queue_attributes("std-q", ["ApproximateNumberOfMessages"])
    assert attrs["ApproximateNumberOfMessages"] == 3 and set(counted) == {"std-q"}  # a reader still counts
    assert backend.get_queue_attributes("dedup-q.fifo", ["ApproximateNumberOfMessages"])[
        "ApproximateNumberOfMessages"] == 1  # the content-based deduplication still applies


def test_queue_walks_read_the_clock_once_and_give_moto_s_counts() -> None:
    """Patch 8: the visible/in-flight/delayed walks equal moto's per-message answers on the same messages."""
    from moto.sqs.models import Message, Queue, SQSBackend

    from radloop.local import moto_server

    moto_server.patch()
    moto_server.patch()  # idempotent
    backend = SQSBackend("us-east-1", "123456789012")
    q = backend.create_queue("walk-q")
    for i in range(30):
        m = Message(f"m{i}", f"body {i}")
        m.mark_sent(delay_seconds=600 if i % 5 == 0 else None)
        if i % 3 == 0:
            m.change_visibility(600)  # received: in flight
        q._messages.append(m)  # noqa: SLF001 - the queue's own list, as add_message fills it
    own = ([m for m in q._messages if m.visible and not m.delayed],  # noqa: SLF001 - moto's per-message properties
           sum(1 for m in q._messages if not m.visible), sum(1 for m in q._messages if m.delayed))  # noqa: SLF001
    assert (q.messages, q.approximate_number_of_messages_not_visible,
            q.approximate_number_of_messages_delayed) == own
    assert len(own[0]) == 16 and own[1] == 10 and own[2] == 6
    assert Queue.messages.fget.__radloop_one_clock__  # type: ignore[attr-defined]


def test_a_chosen_port_is_one_no_outgoing_connection_can_take() -> None:
    """CI 2026-12-07: the quick demo's orchestrator failed to bind a port chosen with ``bind(0)``, because an outgoing
    connection had been given it meanwhile. Chosen ports now lie below the kernel's ephemeral range."""
    import socket

    from radloop.local.embedded_aws import ephemeral_range, free_port

    lo, hi = ephemeral_range()
    chosen = {free_port() for _ in range(300)}
    assert len(chosen) == 300, "one process is never handed the same port twice"
    assert not [p for p in chosen if lo <= p <= hi], f"ports inside the ephemeral range {lo}-{hi}"
    with socket.socket() as listener:  # and outgoing connections' local ports never land on them
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port)) as c:
                assert c.getsockname()[1] not in chosen


def _raw_call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    # moto checks no signature, but answers an anonymous read of a private object with 403.
    auth = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
                             "SignedHeaders=host, Signature=0"}
    conn.request(method, path, body=body, headers={**auth, **(headers or {})})
    response = conn.getresponse()
    return response, response.read()


def test_calls_reuse_one_connection_and_each_request_is_framed(aws_endpoint: str) -> None:
    """Patch 9: the server keeps a connection open across requests (werkzeug closed every one), and every answer is
    framed by its length: a HEAD keeps the object's length and sends no body, and a request body the application
    answers without reading is skipped, so the next request on the connection is read from its first byte."""
    host, port = aws_endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    bucket = f"keepalive-{uuid.uuid4().hex[:8]}"
    try:
        response, _ = _raw_call(conn, "PUT", f"/{bucket}")
        assert response.status == 200
        assert response.getheader("Connection") is None
        sock = conn.sock
        assert sock is not None  # http.client closes its socket after an answer that says "Connection: close"
        payload = os.urandom(100_000)
        response, _ = _raw_call(conn, "PUT", f"/{bucket}/object", body=payload)
        assert response.status == 200
        response, body = _raw_call(conn, "HEAD", f"/{bucket}/object")
        assert (response.status, int(response.getheader("Content-Length")), body) == (200, 100_000, b"")
        response, body = _raw_call(conn, "GET", f"/{bucket}/object")
        assert response.status == 200 and body == payload
        response, _ = _raw_call(conn, "PUT", f"/no-such-bucket-{uuid.uuid4().hex[:8]}/object",
                                body=os.urandom(50_000))
        assert response.status == 404
        response, body = _raw_call(conn, "POST", "/", body=b"{}", headers={
            "X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request, "
                             "SignedHeaders=host, Signature=0"})
        assert response.status == 200 and "TableNames" in json.loads(body)
        assert conn.sock is sock  # six requests, one connection
    finally:
        conn.close()


def test_a_long_poll_holds_only_its_own_connection(aws_endpoint: str) -> None:
    """Patch 9 keeps one server thread per connection: requests on other connections are answered while long polls
    wait (a fixed pool of threads, tried with waitress, queued them behind the polls)."""
    cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=16)
    sqs = boto3.client("sqs", endpoint_url=aws_endpoint, region_name="us-east-1", config=cfg)
    s3 = boto3.client("s3", endpoint_url=aws_endpoint, region_name="us-east-1", config=cfg)
    url = sqs.create_queue(QueueName=f"poll-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    bucket = f"poll-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(max_workers=12) as pool:
        polls = [pool.submit(sqs.receive_message, QueueUrl=url, WaitTimeSeconds=4) for _ in range(12)]
        time.sleep(0.5)  # the polls reach the server and wait there
        for i in range(5):
            s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x" * 1000)
        answered_while_polling = not any(p.done() for p in polls)
        assert all(p.result(timeout=30).get("Messages") is None for p in polls)
    assert answered_while_polling


def test_moto_s_apps_run_without_flask_debug_mode() -> None:
    """Patch 13: moto created every service's Flask app in debug mode, which defines a class per request (about 6%
    of the endpoint's CPU under STOW load); the server's apps are created without it, and an S3 PUT still works."""
    import moto.server
    from flask import Flask
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from werkzeug.test import Client

    from radloop.local import moto_server

    moto_server.patch()
    dispatcher = DomainDispatcherApplication(moto.server.create_backend_app)
    app = dispatcher.get_application({"HTTP_HOST": "s3.amazonaws.com", "PATH_INFO": "/", "REQUEST_METHOD": "GET"})
    assert isinstance(app, Flask) and app.debug is False
    client = Client(dispatcher)
    bucket = f"nodebug-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
                             "SignedHeaders=host, Signature=0"}
    assert client.put(f"/{bucket}", headers={"Host": "s3.amazonaws.com", **auth}).status_code == 200
    put = client.put(f"/{bucket}/k", data=b"x" * 1000, headers={"Host": "s3.amazonaws.com", **auth})
    assert put.status_code == 200 and put.headers["ETag"] == f'"{hashlib.md5(b"x" * 1000).hexdigest()}"'
