"""Small helpers for tests that talk to the moto server (queues, counters, envelopes)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from shared.aws import AwsClients
from shared.events import Event


def envelope(event: Event, source: str = "radloop.test") -> str:
    """An SQS body exactly as an EventBridge rule delivers it."""
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": event.name,
            "source": source,
            "time": "2026-01-01T00:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": json.loads(event.to_detail()),
        }
    )


async def queue_url(clients: AwsClients, name: str) -> str:
    sqs = await clients.sqs()
    return (await sqs.get_queue_url(QueueName=name))["QueueUrl"]


async def depth(clients: AwsClients, name: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    sqs = await clients.sqs()
    a = (
        await sqs.get_queue_attributes(
            QueueUrl=await queue_url(clients, name),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


async def drain_queue(clients: AwsClients, name: str, wait_s: float = 2.0, max_messages: int = 100) -> list[dict[str, Any]]:
    """Receive (and delete) what a queue holds, waiting up to ``wait_s`` for the first message."""
    sqs = await clients.sqs()
    url = await queue_url(clients, name)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait_s
    while len(out) < max_messages:
        resp = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
        )
        msgs = resp.get("Messages", [])
        for m in msgs:
            out.append(m)
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if not msgs:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    return out


async def counter(clients: AwsClients, key: str) -> int:
    ddb = await clients.dynamodb()
    item = (
        await ddb.get_item(TableName=clients.settings.topology.table("state"), Key={"key": {"S": key}}, ConsistentRead=True)
    ).get("Item")
    return int(item["n"]["N"]) if item else 0


async def wait_for(predicate: Any, timeout_s: float = 20.0, interval_s: float = 0.2) -> Any:
    """Poll an async predicate until truthy (bounded); returns its last value."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    return value


class FailingPublisher:
    """An :class:`~shared.publisher.EventPublisher` that fails ``event_name`` while ``down`` (as EventBridge answering
    500, or a process killed before the event went out); every other event, and all once ``down`` is False, go out."""

    def __init__(self, real: Any, event_name: str) -> None:
        self.real, self.event_name, self.down = real, event_name, True

    async def publish(self, event: Any) -> Any:
        if self.down and event.name == self.event_name:
            raise RuntimeError("EventBridge answered 500")
        return await self.real.publish(event)
