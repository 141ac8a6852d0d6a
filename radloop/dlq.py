"""Dead-letter queue operations: list each service's DLQ, show its messages with their reasons, redrive them.

Works the same against the embedded endpoint and against AWS: it uses only ``ReceiveMessage``, ``SendMessage`` and
``DeleteMessage`` (moto has no ``StartMessageMoveTask``). A redriven message is sent to its source queue *before* it
is deleted from the DLQ, so a crash in between leaves a duplicate (which the consumers' idempotency absorbs), never a
loss. Message bodies hold identifiers only (events carry no PHI); ``show`` prints them as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shared.aws import AwsClients
from shared.topology import QueueSpec

#: The consumer's dead-letter attributes (shared/consumer.py); SQS's own redrive sets none.
REASON_ATTR = "radloop-dead-letter-reason"
SOURCE_ATTR = "radloop-source-queue"
#: ReceiveMessage returns at most 10 per call; one command never walks more than this many messages.
MAX_MESSAGES = 1000


@dataclass
class DeadLetter:
    """One message in a DLQ."""

    queue: str
    message_id: str
    receipt_handle: str
    detail_type: str
    event_id: str
    reason: str
    receive_count: int
    body: str = field(repr=False)

    def summary(self) -> dict[str, Any]:
        return {"queue": self.queue, "message_id": self.message_id, "detail_type": self.detail_type,
                "event_id": self.event_id, "reason": self.reason, "receive_count": self.receive_count}


def queues_for(clients: AwsClients, queue: str | None) -> dict[str, QueueSpec]:
    """The consuming services' queues, or the one named (by service or queue name); a clear error otherwise."""
    topo = clients.settings.topology
    if queue is None:
        return dict(topo.queues)
    for service, spec in topo.queues.items():
        if queue in (service, spec.name, spec.dlq_name):
            return {service: spec}
    names = ", ".join(sorted(topo.queues))
    raise ValueError(f"unknown queue {queue!r}; expected a service ({names}) or its queue name")


async def depths(clients: AwsClients, queue: str | None = None) -> list[dict[str, Any]]:
    """Approximate depth of each queue and its DLQ."""
    sqs = await clients.sqs()
    out = []
    for service, spec in queues_for(clients, queue).items():
        row: dict[str, Any] = {"service": service, "queue": spec.name, "dlq": spec.dlq_name}
        for key, name in (("queue_depth", spec.name), ("dlq_depth", spec.dlq_name)):
            url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
            attrs = (await sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                              "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
            row[key] = int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
                attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
        out.append(row)
    return out


def _parse(queue: str, m: dict[str, Any]) -> DeadLetter:
    attrs = m.get("MessageAttributes") or {}
    detail_type = event_id = ""
    try:
        env = json.loads(m.get("Body") or "")
        if isinstance(env, dict):
            detail_type = str(env.get("detail-type", ""))
            detail = env.get("detail")
            event_id = str(detail.get("event_id", "")) if isinstance(detail, dict) else ""
    except ValueError:
        pass  # an unparseable body is one of the reasons a message is here; show it as it is
    reason = attrs.get(REASON_ATTR, {}).get("StringValue") or "maxReceiveCount exceeded (the handler kept failing)"
    return DeadLetter(queue=queue, message_id=m["MessageId"], receipt_handle=m["ReceiptHandle"],
                      detail_type=detail_type, event_id=event_id, reason=reason,
                      receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                      body=m.get("Body") or "")


async def _receive(clients: AwsClients, dlq_name: str, limit: int, hide_s: int) -> list[DeadLetter]:
    """Receive up to ``limit`` messages, keeping them invisible for ``hide_s`` (0: visible again at once)."""
    sqs = await clients.sqs()
    url = (await sqs.get_queue_url(QueueName=dlq_name))["QueueUrl"]
    seen: dict[str, DeadLetter] = {}
    empty = 0
    # Bounded: at most limit/10 + 3 calls. Messages already seen keep coming back when hide_s is 0, so stop then.
    for _ in range(limit // 10 + 3):
        resp = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, limit - len(seen)) or 1,
                                         WaitTimeSeconds=0, VisibilityTimeout=max(hide_s, 1),
                                         MessageAttributeNames=["All"],
                                         MessageSystemAttributeNames=["ApproximateReceiveCount"])
        msgs = resp.get("Messages", [])
        new = [m for m in msgs if m["MessageId"] not in seen]
        for m in new:
            seen[m["MessageId"]] = _parse(dlq_name, m)
        if not new:
            empty += 1
            if empty >= 2:
                break
        if len(seen) >= limit:
            break
    if hide_s == 0:
        for d in seen.values():  # make them visible again: show must not hide messages from other operators
            await sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=d.receipt_handle, VisibilityTimeout=0)
    return list(seen.values())


async def show(clients: AwsClients, queue: str | None = None, limit: int = 50) -> list[DeadLetter]:
    """The messages in the DLQ(s), with their reasons; nothing is removed."""
    out: list[DeadLetter] = []
    for spec in queues_for(clients, queue).values():
        out += await _receive(clients, spec.dlq_name, min(limit, MAX_MESSAGES), hide_s=0)
    return out


async def redrive(clients: AwsClients, queue: str | None = None, limit: int = MAX_MESSAGES,
                  message_id: str | None = None) -> list[DeadLetter]:
    """Move DLQ messages back to their source queue (send first, then delete); returns what was moved."""
    sqs = await clients.sqs()
    moved: list[DeadLetter] = []
    for spec in queues_for(clients, queue).values():
        src = (await sqs.get_queue_url(QueueName=spec.name))["QueueUrl"]
        dlq = (await sqs.get_queue_url(QueueName=spec.dlq_name))["QueueUrl"]
        for d in await _receive(clients, spec.dlq_name, min(limit, MAX_MESSAGES), hide_s=60):
            if message_id is not None and d.message_id != message_id:
                await sqs.change_message_visibility(QueueUrl=dlq, ReceiptHandle=d.receipt_handle,
                                                    VisibilityTimeout=0)
                continue
            await sqs.send_message(QueueUrl=src, MessageBody=d.body or "(empty)")
            await sqs.delete_message(QueueUrl=dlq, ReceiptHandle=d.receipt_handle)
            moved.append(d)
    return moved
