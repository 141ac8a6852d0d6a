"""The local renderer of :mod:`shared.topology`: creates every resource idempotently through aiobotocore.

Used by ``radloop aws``/``radloop up`` against the embedded endpoint, and by the tests. Running it twice is a no-op
the second time (every create either tolerates "already exists" or is preceded by a lookup), and several processes
may run it at once (a lost race to create a table is "already exists" too).

The boot marker. The embedded endpoint (moto) keeps everything in memory: when it restarts, every queue, table,
bucket and stored item is gone, and each client only sees "does not exist" errors. The bootstrap's last step writes
one item, ``platform#boot`` in the ``state`` table, with a random boot id. Its absence on an endpoint that answers
means the endpoint lost its state; a boot id other than the one recorded at ``radloop up`` means it lost it and the
topology was re-created since (:func:`endpoint_state`). Consumers re-create the topology when their queue disappears
(:func:`rebootstrap`), only against a local endpoint: in AWS the CDK app owns the resources.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError

from shared.aws import AwsClients
from shared.settings import Settings
from shared.topology import TableSpec, Topology

log = logging.getLogger(__name__)


async def bootstrap_topology(clients: AwsClients, topo: Topology | None = None) -> dict[str, Any]:
    """Create the bus, queues (with DLQs and redrive), rules, buckets, tables and model package group."""
    topo = topo or clients.settings.topology
    sqs = await clients.sqs()
    events = await clients.events()
    s3 = await clients.s3()
    ddb = await clients.dynamodb()
    sm = await clients.sagemaker()
    region = clients.settings.region
    summary: dict[str, Any] = {"queues": {}, "buckets": [], "tables": [], "rules": []}

    # --- bus ---
    try:
        await events.create_event_bus(Name=topo.bus_name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise

    # --- queues ---
    arns: dict[str, str] = {}
    for service, q in topo.queues.items():
        dlq_url = (
            await sqs.create_queue(QueueName=q.dlq_name, Attributes={"MessageRetentionPeriod": str(q.dlq_retention_s)})
        )["QueueUrl"]
        dlq_arn = (await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        attrs = {
            "VisibilityTimeout": str(q.visibility_timeout_s),
            "MessageRetentionPeriod": str(q.retention_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": q.max_receive_count}),
        }
        try:
            url = (await sqs.create_queue(QueueName=q.name, Attributes=attrs))["QueueUrl"]
        except ClientError as exc:  # exists with other attributes: bring it in line
            if exc.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            url = (await sqs.get_queue_url(QueueName=q.name))["QueueUrl"]
            await sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        arns[service] = arn
        summary["queues"][service] = {"url": url, "dlq_url": dlq_url}

    # --- rules ---
    for rule in topo.rules:
        await events.put_rule(
            Name=rule.name, EventBusName=rule.bus, EventPattern=json.dumps(rule.event_pattern), State="ENABLED"
        )
        await events.put_targets(
            Rule=rule.name, EventBusName=rule.bus, Targets=[{"Id": rule.target_queue, "Arn": arns[rule.target_queue]}]
        )
        summary["rules"].append(rule.name)

    # --- buckets ---
    for spec in topo.buckets.values():
        kw: dict[str, Any] = {"Bucket": spec.name}
        if region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await s3.create_bucket(**kw)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        if spec.eventbridge_notifications:
            await s3.put_bucket_notification_configuration(
                Bucket=spec.name, NotificationConfiguration={"EventBridgeConfiguration": {}}
            )
        summary["buckets"].append(spec.name)
    await ensure_no_champion_marker(s3, topo.bucket("ml"))

    # --- tables ---
    existing = set()
    paginator_token: str | None = None
    while True:
        resp = await ddb.list_tables(**({"ExclusiveStartTableName": paginator_token} if paginator_token else {}))
        existing.update(resp.get("TableNames", []))
        paginator_token = resp.get("LastEvaluatedTableName")
        if not paginator_token:
            break
    for table in topo.tables.values():
        if table.name not in existing:
            try:
                await ddb.create_table(**table_definition(table))
            except ClientError as exc:  # another process re-creating the topology at the same time won the race
                if exc.response["Error"]["Code"] != "ResourceInUseException":
                    raise
            if table.ttl_attribute:
                await ddb.update_time_to_live(
                    TableName=table.name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute}
                )
        summary["tables"].append(table.name)

    # --- model package group ---
    try:
        await sm.create_model_package_group(
            ModelPackageGroupName=topo.model_package_group,
            ModelPackageGroupDescription="radloop pneumonia triage models",
        )
    except ClientError as exc:
        msg = str(exc)
        if "already exists" not in msg.lower() and exc.response["Error"]["Code"] not in (
            "ValidationException",
            "ResourceInUse",
        ):
            raise
    summary["model_package_group"] = topo.model_package_group
    # Last, so that its presence means everything above exists.
    summary["boot_id"] = await ensure_boot_marker(clients, topo)
    return summary


#: The ``state``-table key of the boot marker (see the module docstring).
BOOT_MARKER_KEY = "platform#boot"
#: Error codes that mean "this queue/table/bucket does not exist" (the endpoint lost its state, or it was never made).
MISSING_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "ResourceNotFoundException",
                           "NoSuchBucket"})


def is_missing_resource(exc: BaseException) -> bool:
    """Whether ``exc`` says a queue, table or bucket does not exist."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "") in MISSING_CODES
    return type(exc).__name__ in ("QueueDoesNotExist", "ResourceNotFoundException", "NoSuchBucket")


async def ensure_boot_marker(clients: AwsClients, topo: Topology | None = None) -> str:
    """Write the boot marker unless one exists; return the boot id in effect (ours, or the one already there)."""
    topo = topo or clients.settings.topology
    ddb = await clients.dynamodb()
    boot_id = uuid.uuid4().hex
    try:
        await ddb.put_item(TableName=topo.table("state"), ConditionExpression="attribute_not_exists(#k)",
                           ExpressionAttributeNames={"#k": "key"},
                           Item={"key": {"S": BOOT_MARKER_KEY}, "boot_id": {"S": boot_id},
                                 "bootstrapped_at": {"N": str(int(time.time()))}})
        return boot_id
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
    current = await read_boot_id(clients, topo)
    return current or boot_id


async def read_boot_id(clients: AwsClients, topo: Topology | None = None) -> str | None:
    """The boot id of the endpoint's current state, or None if its topology is gone (raises if it does not answer)."""
    topo = topo or clients.settings.topology
    ddb = await clients.dynamodb()
    try:
        item = (await ddb.get_item(TableName=topo.table("state"), Key={"key": {"S": BOOT_MARKER_KEY}},
                                   ConsistentRead=True)).get("Item")
    except ClientError as exc:
        if is_missing_resource(exc):
            return None
        raise
    return item["boot_id"]["S"] if item else None


def read_boot_id_sync(settings: Settings, ddb: Any = None) -> str | None:
    """:func:`read_boot_id` for synchronous callers (``radloop status``, the local supervisor); ``ddb``: a boto3
    DynamoDB client to reuse."""
    from shared.aws import boto3_client

    ddb = ddb or boto3_client(settings, "dynamodb")
    try:
        item = ddb.get_item(TableName=settings.topology.table("state"), Key={"key": {"S": BOOT_MARKER_KEY}},
                            ConsistentRead=True).get("Item")
    except ClientError as exc:
        if is_missing_resource(exc):
            return None
        raise
    return item["boot_id"]["S"] if item else None


def endpoint_state(settings: Settings, recorded_boot_id: str | None) -> dict[str, Any]:
    """Whether the endpoint still holds the data bootstrapped as ``recorded_boot_id`` (what ``radloop status`` shows).

    ``data_lost`` is True when the boot marker is gone (the endpoint restarted) or differs from the recorded one (it
    restarted and the topology was re-created since): everything stored before is gone either way.
    """
    where = settings.aws_endpoint_url or "AWS"
    try:
        current = read_boot_id_sync(settings)
    except Exception as exc:
        return {"data_lost": None, "boot_id": None, "message": f"the AWS endpoint at {where} does not answer: "
                                                               f"{type(exc).__name__}"}
    lost = current is None or (recorded_boot_id is not None and current != recorded_boot_id)
    out: dict[str, Any] = {"data_lost": lost, "boot_id": current, "recorded_boot_id": recorded_boot_id}
    if current is None:
        out["message"] = (f"STORED DATA IS GONE: the embedded AWS endpoint at {where} restarted and lost everything it "
                          "held in memory (images, index, scores, worklist cases, models, queued messages). The "
                          "services re-create the empty topology; send the studies again.")
    elif lost:
        out["message"] = (f"STORED DATA IS GONE: the embedded AWS endpoint at {where} restarted since radloop started; "
                          "the topology was re-created, but every image, score, case, model and message stored before "
                          "is gone. Send the studies again (or restart radloop for a clean start).")
    else:
        out["message"] = "the endpoint holds the data bootstrapped at start"
    return out


_REBOOT_LOCKS: dict[int, asyncio.Lock] = {}


async def rebootstrap(clients: AwsClients, reason: str = "") -> bool:
    """Re-create the topology after the embedded endpoint lost it; returns whether it ran.

    Only against a local endpoint (``aws_endpoint_url`` set): in AWS a missing queue is a deployment fault for the
    CDK app to fix, and a service must not create resources there. Single-flight per process (one lock per running
    event loop), and a no-op when the marker is back (another process re-created it meanwhile).
    """
    if not clients.settings.aws_endpoint_url:
        return False
    loop_id = id(asyncio.get_running_loop())
    lock = _REBOOT_LOCKS.setdefault(loop_id, asyncio.Lock())
    async with lock:
        if await read_boot_id(clients) is not None:
            return False
        log.warning("the AWS endpoint lost its state (restarted?); re-creating the topology; data stored before is gone",
                    extra={"endpoint": clients.settings.aws_endpoint_url, "reason": reason[:200]})
        await bootstrap_topology(clients)
        return True


def table_definition(spec: TableSpec) -> dict[str, Any]:
    """``CreateTable`` arguments for a table spec (on-demand billing)."""
    attrs: dict[str, str] = {spec.partition_key.name: spec.partition_key.type}
    schema = [{"AttributeName": spec.partition_key.name, "KeyType": "HASH"}]
    if spec.sort_key:
        attrs[spec.sort_key.name] = spec.sort_key.type
        schema.append({"AttributeName": spec.sort_key.name, "KeyType": "RANGE"})
    gsis = []
    for idx in spec.indexes:
        attrs[idx.partition_key.name] = idx.partition_key.type
        ks = [{"AttributeName": idx.partition_key.name, "KeyType": "HASH"}]
        if idx.sort_key:
            attrs[idx.sort_key.name] = idx.sort_key.type
            ks.append({"AttributeName": idx.sort_key.name, "KeyType": "RANGE"})
        gsis.append({"IndexName": idx.name, "KeySchema": ks, "Projection": {"ProjectionType": "ALL"}})
    out: dict[str, Any] = {
        "TableName": spec.name,
        "AttributeDefinitions": [{"AttributeName": k, "AttributeType": t} for k, t in attrs.items()],
        "KeySchema": schema,
        "BillingMode": "PAY_PER_REQUEST",
    }
    if gsis:
        out["GlobalSecondaryIndexes"] = gsis
    return out


async def ensure_no_champion_marker(s3: Any, ml_bucket: str) -> None:
    """The object that makes the "no champion" input of the pipeline's Evaluate step a non-empty prefix."""
    from shared.storage import NO_CHAMPION_MARKER

    await s3.put_object(Bucket=ml_bucket, Key=NO_CHAMPION_MARKER, ContentType="text/plain",
                        Body=b"No champion model: the Evaluate step of the training pipeline compares with none.\n")
