"""Fixtures of the ingestion tests: a bootstrapped deployment and the real service process per module."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from shared.auth import mint_token
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.index_writer import decode_item
from shared.settings import Settings
from tests.support.ingestion_service import RunningService, ingestion_service

#: Calling AE titles the test SCP accepts ("DEIDSCU" is also de-identified).
ALLOWED_AES = ["STORESCU", "DCMSEND", "PYNETDICOM", "DEIDSCU", "ECHOSCU"]


def new_deployment(endpoint: str, var: Path) -> Settings:
    s = Settings(aws_endpoint_url=endpoint, prefix=f"ing-{uuid.uuid4().hex[:10]}", var_dir=var, aws_max_attempts=2)

    async def boot() -> None:
        async with AwsClients(s) as c:
            await bootstrap_topology(c)

    asyncio.run(boot())
    return s


@pytest.fixture(scope="session")
def ing_settings(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return new_deployment(aws_endpoint, tmp_path_factory.mktemp("ingvar"))


@pytest.fixture(scope="session")
def service(ing_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {"RADLOOP_MAX_INFLATED_BYTES": str(16 << 20), "RADLOOP_MAX_REQUEST_BYTES": str(64 << 20),
           "RADLOOP_DEIDENTIFY_CALLING_AES": json.dumps(["DEIDSCU"]),
           "RADLOOP_DIMSE_ALLOWED_CALLING_AES": json.dumps(ALLOWED_AES)}
    with ingestion_service(ing_settings, tmp_path_factory.mktemp("ingsvc"), dimse=True, env=env) as svc:
        yield svc


@pytest.fixture(scope="session")
def pacs_token(ing_settings: Settings) -> str:
    return mint_token(ing_settings, "pacs")


class Aws:
    """Synchronous views of one deployment's buckets, index and queues, for assertions."""

    def __init__(self, settings: Settings) -> None:
        kw = {"endpoint_url": settings.aws_endpoint_url, "region_name": "us-east-1"}
        self.s = settings
        self.s3 = boto3.client("s3", **kw)
        self.ddb = boto3.client("dynamodb", **kw)
        self.sqs = boto3.client("sqs", **kw)
        self.images = settings.topology.bucket("images")
        self.ingest = settings.topology.bucket("ingestion")
        self.table = settings.topology.table("instances")

    def keys(self, bucket: str | None = None, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket or self.images, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def get(self, key: str, bucket: str | None = None) -> bytes:
        return self.s3.get_object(Bucket=bucket or self.images, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def items(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in self.ddb.get_paginator("scan").paginate(TableName=self.table):
            out += [decode_item(i) for i in page["Items"]]
        return out

    def instance(self, study: str, series: str, sop: str) -> dict[str, Any] | None:
        r = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": f"STUDY#{study}"},
                                                          "sk": {"S": f"INSTANCE#{series}#{sop}"}}, ConsistentRead=True)
        return decode_item(r["Item"]) if "Item" in r else None

    def drain_events(self, service: str = "verification", *, wait_s: float = 3.0,
                     until: Callable[[list[dict[str, Any]]], bool] | None = None) -> list[dict[str, Any]]:
        """Receive (and delete) every envelope on a subscriber's queue, polling up to ``wait_s``."""
        url = self.sqs.get_queue_url(QueueName=self.s.topology.queue_for(service).name)["QueueUrl"]
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            msgs = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            for m in msgs:
                out.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            if until is not None and until(out) and not msgs:
                break
        return out


@pytest.fixture(scope="session")
def aws(ing_settings: Settings) -> Aws:
    return Aws(ing_settings)


@pytest.fixture(scope="module")
def rejected_queue(aws):
    """Route InstanceRejected on the deployment's bus to a test queue (no service subscribes to it)."""
    name = f"{aws.s.prefix}-rejected-{uuid.uuid4().hex[:6]}"  # one per module: each reads only its own events
    url = aws.sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events", endpoint_url=aws.s.aws_endpoint_url, region_name="us-east-1")
    bus = aws.s.topology.bus_name
    events.put_rule(Name=f"{name}-rule", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["InstanceRejected"]}))
    events.put_targets(Rule=f"{name}-rule", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return url
