"""The local renderer of :mod:`shared.topology`: creates every resource idempotently through aiobotocore.

Used by ``radloop aws``/``radloop up`` against the embedded endpoint, and by the tests. Running it twice is a no-op
the second time (every create either tolerates "already exists" or is preceded by a lookup).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from shared.aws import AwsClients
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
            await ddb.create_table(**table_definition(table))
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
    return summary


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
