"""Append-only audit records for every access to PHI.

A record says who (subject and role), did what (action), to which resources (identifiers only: UIDs, case ids,
model versions), with what outcome, under which trace. It is written to the DynamoDB audit table and to the structured
log. Records never hold patient names or IDs.

Table design: the partition key is ``{day}#{shard}`` with :data:`AUDIT_SHARDS` shards per day (a random shard per
record), so writes spread over that many partitions instead of one per day (a partition takes about 1,000 writes/s);
the sort key is the time plus a random id, and every put is conditional on the key being new, so no record can ever
be overwritten. Reading a day queries its shards and merges them by time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.auth import Principal
from shared.aws import AwsClients
from shared.telemetry import current_ids

log = logging.getLogger("radloop.audit")

#: Partitions per day of the audit table (each takes about 1,000 writes/s).
AUDIT_SHARDS = 16


def partition(day: str, shard: int) -> str:
    """The audit table's partition key of one shard of one day (UTC, ``YYYY-MM-DD``)."""
    return f"{day}#{shard:02d}"


class AuditLog:
    def __init__(self, clients: AwsClients, service: str) -> None:
        self.clients = clients
        self.service = service
        self.table = clients.settings.topology.table("audit")

    async def record(
        self,
        principal: Principal | None,
        action: str,
        resource: dict[str, Any],
        *,
        outcome: str = "success",
        count: int = 1,
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        trace_id, _ = current_ids()
        rec = {
            "day": partition(now.strftime("%Y-%m-%d"), secrets.randbelow(AUDIT_SHARDS)),
            "ts_id": f"{now.isoformat(timespec='microseconds')}#{uuid.uuid4().hex[:12]}",
            "at": now.isoformat(timespec="milliseconds"),
            "service": self.service,
            "subject": principal.subject if principal else "system",
            "role": principal.role if principal else "system",
            "action": action,
            "resource": {k: str(v) for k, v in resource.items() if v is not None},
            "outcome": outcome,
            "count": count,
            "trace_id": trace_id or "",
        }
        ddb = await self.clients.dynamodb()
        await ddb.put_item(
            TableName=self.table,
            Item={
                "day": {"S": rec["day"]},
                "ts_id": {"S": rec["ts_id"]},
                "at": {"S": rec["at"]},
                "service": {"S": rec["service"]},
                "subject": {"S": rec["subject"]},
                "role": {"S": rec["role"]},
                "action": {"S": rec["action"]},
                "resource": {"S": json.dumps(rec["resource"], sort_keys=True)},
                "outcome": {"S": rec["outcome"]},
                "count": {"N": str(count)},
                "trace_id": {"S": rec["trace_id"]},
            },
            ConditionExpression="attribute_not_exists(ts_id)",
        )
        log.info("audit", extra={"audit": rec})
        return rec

    async def recent(self, day: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Records of one day (UTC, default today), newest first: each shard's newest ``limit``, merged."""
        ddb = await self.clients.dynamodb()
        day = day or datetime.now(UTC).strftime("%Y-%m-%d")

        async def shard(n: int) -> list[dict[str, Any]]:
            resp = await ddb.query(
                TableName=self.table,
                KeyConditionExpression="#d = :d",
                ExpressionAttributeNames={"#d": "day"},
                ExpressionAttributeValues={":d": {"S": partition(day, n)}},
                ScanIndexForward=False,
                Limit=limit,
            )
            return list(resp.get("Items", []))

        items = [it for part in await asyncio.gather(*(shard(n) for n in range(AUDIT_SHARDS))) for it in part]
        out = []
        for it in items:
            rec = {k: next(iter(v.values())) for k, v in it.items()}
            rec["resource"] = json.loads(rec["resource"])
            rec["count"] = int(rec["count"])
            out.append(rec)
        out.sort(key=lambda r: r["ts_id"], reverse=True)
        return out[:limit]
