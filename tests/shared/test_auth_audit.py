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
from shared.service import service_app
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

    return service_app("registry", settings, title="t", routers=[router])


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
    with pytest.raises(ValueError, match="refuses the development signing key"):
        Settings(environment="prod", pseudonym_key="x" * 32)
    ok = Settings(environment="prod", auth_signing_key="s" * 40, pseudonym_key="x" * 32)
    assert ok.auth_signing_key != DEV_SIGNING_KEY
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
