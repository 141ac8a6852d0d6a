"""The embedded endpoint's DynamoDB fixes (radloop.local.moto_server), against the real moto server process."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

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
    import time

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
