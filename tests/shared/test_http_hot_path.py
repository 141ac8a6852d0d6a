"""The per-request work every HTTP request pays (issue 20's lean frame path): a token is verified once, not once per
frame, and never past its lifetime; the server span is named from the router's own match; trace lines from several
processes sharing one file never interleave."""

from __future__ import annotations

import inspect
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import shared.auth as auth
from shared.auth import Principal, ReadUser, VerifiedTokens, current_principal, mint_token
from shared.settings import Settings
from shared.telemetry import JsonLinesSpanExporter, instrument_fastapi

UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"


def _app(settings: Settings) -> FastAPI:
    app = FastAPI()
    app.state.settings = settings

    @app.get("/dicomweb/studies/{study}/series")
    async def series(study: str, user: ReadUser) -> dict[str, str]:
        return {"subject": user.subject}

    instrument_fastapi(app)
    return app


async def _get(app: FastAPI, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        return await client.get(path, headers=headers)


def _count_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens verified from now on (the real verification still runs)."""
    calls: list[str] = []
    real = auth._verify

    def counting(s: Settings, token: str) -> tuple[Principal, float]:
        calls.append(token)
        return real(s, token)

    monkeypatch.setattr(auth, "_verify", counting)
    return calls


def test_services_serve_on_uvloop_with_the_httptools_parser() -> None:
    # shared.service.serve leaves uvicorn's loop and http at "auto": these are what it picks when installed
    from uvicorn.config import Config

    config = Config(app=_app(Settings()), log_config=None)
    config.load()
    assert config.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"
    loop = config.get_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_the_principal_dependencies_run_on_the_event_loop() -> None:
    # A plain-function dependency is run by FastAPI in a worker thread: two thread hops per frame request before.
    assert inspect.iscoroutinefunction(current_principal)
    dep = auth.require("read").dependency
    assert inspect.iscoroutinefunction(dep)


async def test_a_token_is_verified_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(var_dir=tmp_path)
    calls = _count_verifications(monkeypatch)
    app = _app(settings)
    viewer, other = mint_token(settings, "viewer", subject="u-1"), mint_token(settings, "viewer", subject="u-2")
    for _ in range(5):
        r = await _get(app, f"/dicomweb/studies/{UID}/series", viewer)
        assert r.status_code == 200 and r.json() == {"subject": "u-1"}
    assert calls == [viewer]
    r = await _get(app, f"/dicomweb/studies/{UID}/series", other)  # another token is verified on its own
    assert r.json() == {"subject": "u-2"} and calls == [viewer, other]
    tampered = viewer[:-2] + ("AA" if not viewer.endswith("AA") else "BB")
    r = await _get(app, f"/dicomweb/studies/{UID}/series", tampered)  # only the very token verified matches
    assert r.status_code == 401
    assert (await _get(app, f"/dicomweb/studies/{UID}/series", None)).status_code == 401


async def test_a_remembered_token_is_verified_again_once_its_expiry_passed(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(var_dir=tmp_path)
    calls = _count_verifications(monkeypatch)
    app = _app(settings)
    token = mint_token(settings, "viewer", ttl_s=30)
    assert (await _get(app, f"/dicomweb/studies/{UID}/series", token)).status_code == 200
    assert (await _get(app, f"/dicomweb/studies/{UID}/series", token)).status_code == 200
    assert len(calls) == 1
    expired = mint_token(settings, "viewer", ttl_s=-5)
    r = await _get(app, f"/dicomweb/studies/{UID}/series", expired)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    now = time.time()
    monkeypatch.setattr(auth.time, "time", lambda: now + 31)  # past the token's exp: the app may not remember it
    await _get(app, f"/dicomweb/studies/{UID}/series", token)
    assert calls == [token, expired, token]  # verified again (by PyJWT's own clock, the real one here)


def test_remembered_tokens_are_bounded_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(auth.time, "time", lambda: now[0])
    tokens = VerifiedTokens(max_entries=3, ttl_s=60)
    p = Principal("s", ("viewer",))
    for k in range(5):
        tokens.put(f"t{k}", p, exp=now[0] + 3600)
    assert [tokens.get(f"t{k}") for k in range(5)] == [None, None, p, p, p]  # the oldest went first
    tokens.put("short", p, exp=now[0] + 10)
    now[0] += 11
    assert tokens.get("short") is None  # its own exp, before the 60 s
    assert tokens.get("t4") is p
    now[0] += 50
    assert tokens.get("t4") is None  # 61 s after it was verified: verified again next time


async def test_the_server_span_is_named_by_its_route_template(tmp_path: Path, spans: Any) -> None:
    settings = Settings(var_dir=tmp_path)
    app = _app(settings)
    token = mint_token(settings, "viewer")
    assert (await _get(app, f"/dicomweb/studies/{UID}/series", token)).status_code == 200
    assert (await _get(app, f"/nowhere/{UID}", token)).status_code == 404
    server = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert [s.name for s in server] == ["GET /dicomweb/studies/{study}/series", "GET"]
    assert server[0].attributes["http.route"] == "/dicomweb/studies/{study}/series"
    assert "http.route" not in server[1].attributes
    assert all(UID not in s.name for s in server)


def _span(writer: int, n: int) -> Any:
    """A finished span with a large attribute, so that one batch of them passes any write buffer's size."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    return ReadableSpan(name=f"w{writer}", context=SpanContext(trace_id=writer + 1, span_id=n + 1, is_remote=False),
                        attributes={"writer": writer, "n": n, "pad": "x" * 2000}, start_time=0, end_time=0,
                        resource=Resource.create({"service.name": "streaming_gateway"}))


def _write(path: str, writer: int) -> None:
    exporter = JsonLinesSpanExporter(Path(path))
    for batch in range(20):
        exporter.export([_span(writer, batch * 50 + k) for k in range(50)])


@pytest.mark.integration  # forks writer processes
def test_processes_sharing_a_trace_file_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "streaming_gateway.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write, args=(str(path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 3 * 20 * 50
    seen = {(d["attributes"]["writer"], d["attributes"]["n"]) for d in map(json.loads, lines)}
    assert len(seen) == 3000
