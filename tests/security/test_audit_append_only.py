"""No audit record can be overwritten (issue 15 §6, "write with a condition").

Every put is conditional on its key being new. Keys hold the time to the microsecond and a random id, so a collision
never happens by chance; the test forces one (same instant, same shard, same id) to show that the second write is
refused by the table and the first record survives unchanged, against the real table on the moto server.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

import shared.audit as audit_mod
from shared.audit import AuditLog
from shared.auth import Principal
from shared.aws import AwsClients


async def test_a_record_with_an_existing_key_is_refused_and_the_first_survives(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    instant = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return instant

    fixed = uuid.UUID("00000000-0000-4000-8000-000000000001")
    monkeypatch.setattr(audit_mod, "datetime", Frozen)
    monkeypatch.setattr(audit_mod.uuid, "uuid4", lambda: fixed)
    monkeypatch.setattr(audit_mod.secrets, "randbelow", lambda n: 3)

    log = AuditLog(clients, "ingestion")
    first = await log.record(Principal("pacs-1", ("pacs",)), "stow.store", {"sop_uid": "1.2.3"})
    with pytest.raises(ClientError) as exc:
        await log.record(Principal("intruder", ("admin",)), "stow.store", {"sop_uid": "9.9.9"}, outcome="failure")
    assert exc.value.response["Error"]["Code"] == "ConditionalCheckFailedException"

    (kept,) = await log.recent(day="2026-01-02", limit=10)
    assert kept["ts_id"] == first["ts_id"]
    assert (kept["subject"], kept["resource"], kept["outcome"]) == ("pacs-1", {"sop_uid": "1.2.3"}, "success")
