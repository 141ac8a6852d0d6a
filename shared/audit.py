"""Append-only audit records for every access to PHI.

A record says who (subject and role), did what (action), to which resources (identifiers only: UIDs, case ids,
model versions), with what outcome, under which trace. It is written to the DynamoDB audit table (partitioned by
day, sorted by time and a random id, written with a conditional put so it can never overwrite) and to the structured
log. Records never hold patient names or IDs.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.auth import Principal
from shared.aws import AwsClients
from shared.telemetry import current_ids

log = logging.getLogger("radloop.audit")


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
            "day": now.strftime("%Y-%m-%d"),
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
        """Records of one day (UTC, default today), newest first."""
        ddb = await self.clients.dynamodb()
        day = day or datetime.now(UTC).strftime("%Y-%m-%d")
        resp = await ddb.query(
            TableName=self.table,
            KeyConditionExpression="#d = :d",
            ExpressionAttributeNames={"#d": "day"},
            ExpressionAttributeValues={":d": {"S": day}},
            ScanIndexForward=False,
            Limit=limit,
        )
        out = []
        for it in resp.get("Items", []):
            rec = {k: next(iter(v.values())) for k, v in it.items()}
            rec["resource"] = json.loads(rec["resource"])
            rec["count"] = int(rec["count"])
            out.append(rec)
        return out
