"""Auth (401/403, the development key outside local) and audit (records, no PHI in logs or spans)."""

from __future__ import annotations

import io
import json
import logging
import time

import httpx
import jwt
import pytest
from fastapi import APIRouter

from shared.audit import AuditLog
from shared.auth import ReadUser, StoreUser, mint_token
from shared.aws import AwsClients
from shared.logging import JsonFormatter, PhiFilter
from shared.service import ServiceSpec, build_app
from shared.settings import DEV_SIGNING_KEY, Settings

CANARY = "CANARY^PATIENT^NAME"


def app_for(settings: Settings):  # type: ignore[no-untyped-def]
    router = APIRouter()

    @router.get("/read")
    async def read(user: ReadUser) -> dict[str, str]:
        return {"subject": user.subject}

    @router.post("/store")
    async def store(user: StoreUser) -> dict[str, str]:
        return {"subject": user.subject}

    async def startup(rt: object) -> object:
        return rt

    return build_app(ServiceSpec(name="registry", title="t", settings=Settings, startup=startup, routers=[router]),
                     settings)


async def call(settings: Settings, method: str, path: str, token: str | None = None) -> httpx.Response:
    app = app_for(settings)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        return await c.request(method, path, headers=headers)


async def test_missing_expired_invalid_and_wrong_role_tokens(adeployment: Settings) -> None:
    s = adeployment
    assert (await call(s, "GET", "/read")).status_code == 401
    expired = jwt.encode({"sub": "u", "roles": ["viewer"], "iss": s.auth_issuer, "aud": s.auth_audience,
                          "exp": int(time.time()) - 10}, s.auth_signing_key, algorithm="HS256")
    r = await call(s, "GET", "/read", expired)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    forged = jwt.encode({"sub": "u", "roles": ["admin"], "iss": s.auth_issuer, "aud": s.auth_audience,
                         "exp": int(time.time()) + 60}, "some-other-key-of-sufficient-length!!", algorithm="HS256")
    assert (await call(s, "GET", "/read", forged)).status_code == 401
    viewer = mint_token(s, "viewer")
    assert (await call(s, "GET", "/read", viewer)).status_code == 200
    r = await call(s, "POST", "/store", viewer)
    assert r.status_code == 403 and "may not store" in r.json()["detail"]
    assert (await call(s, "POST", "/store", mint_token(s, "pacs"))).status_code == 200
    assert (await call(s, "POST", "/store", mint_token(s, "admin"))).status_code == 200


def test_development_key_is_refused_outside_local() -> None:
    # Outside local only the identity provider's RS/ES keys are trusted (JWKS), so the development key, or any
    # shared HS256 secret, cannot sign a production token.
    with pytest.raises(ValueError, match="RADLOOP_AUTH_JWKS_URL"):
        Settings(environment="prod", pseudonym_key="x" * 32)
    with pytest.raises(ValueError, match="RADLOOP_AUTH_JWKS_URL"):
        Settings(environment="prod", auth_signing_key="s" * 40, pseudonym_key="x" * 32)
    assert Settings(environment="local").auth_signing_key == DEV_SIGNING_KEY
    with pytest.raises(ValueError, match="unknown role"):
        mint_token(Settings(), "superuser")


async def test_audit_record_is_written_and_holds_no_phi(clients: AwsClients) -> None:
    audit = AuditLog(clients, "streaming_gateway")
    from shared.auth import Principal

    rec = await audit.record(Principal("dr-who", ("radiologist",)), "wado.metadata",
                             {"study_uid": "1.2.3", "series_uid": "1.2.3.4"})
    recent = await audit.recent()
    assert any(r["ts_id"] == rec["ts_id"] for r in recent)
    mine = next(r for r in recent if r["ts_id"] == rec["ts_id"])
    assert mine["subject"] == "dr-who" and mine["role"] == "radiologist" and mine["action"] == "wado.metadata"
    assert mine["resource"] == {"study_uid": "1.2.3", "series_uid": "1.2.3.4"}


async def test_audit_writes_spread_over_shards_and_read_back_in_order(clients: AwsClients) -> None:
    from shared.audit import AUDIT_SHARDS
    from shared.auth import Principal

    audit = AuditLog(clients, "ingestion")
    written = [await audit.record(Principal("pacs-1", ("pacs",)), "stow.store", {"sop_uid": f"1.2.{i}"})
               for i in range(40)]
    parts = {r["day"] for r in written}
    assert len(parts) > 1, "one partition per day caps writes at about 1,000/s"
    assert all(p.split("#")[1].isdigit() and int(p.split("#")[1]) < AUDIT_SHARDS for p in parts)
    recent = await audit.recent(limit=40)
    assert [r["ts_id"] for r in recent] == sorted((r["ts_id"] for r in written), reverse=True)


def test_json_logs_redact_phi_fields_and_carry_trace_ids() -> None:
    from shared.telemetry import tracer

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter("test"))
    handler.addFilter(PhiFilter())
    log = logging.getLogger("phi-test")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with tracer().start_as_current_span("s"):
            log.info("stored instance", extra={"PatientName": CANARY, "patient_id": "PID-CANARY", "sop_uid": "1.2"})
    finally:
        log.removeHandler(handler)
    line = json.loads(buf.getvalue())
    assert CANARY not in buf.getvalue() and "PID-CANARY" not in buf.getvalue()
    assert line["sop_uid"] == "1.2" and len(line["trace_id"]) == 32 and len(line["span_id"]) == 16
