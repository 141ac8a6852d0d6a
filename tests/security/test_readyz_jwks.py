"""``/readyz`` checks that the identity provider's JWKS is reachable (issue 15 §2).

A service that cannot fetch the keys would answer 401 to every real user, so it must not take traffic. The unit test
of :func:`shared.auth.jwks_problem` shows the check itself; this one shows that a service's readiness runs it: the same
app (built by :func:`shared.service.build_app`, its real lifespan against the moto server) is ready without a JWKS
URL and answers 503 naming the JWKS when its URL points at a port nothing listens on.
"""

from __future__ import annotations

import httpx
from fastapi import APIRouter

from radloop.local.embedded_aws import free_port
from shared.service import ServiceSpec, build_app
from shared.settings import Settings


async def _readyz(settings: Settings) -> httpx.Response:
    async def startup(rt: object) -> object:
        return rt

    app = build_app(ServiceSpec(name="registry", title="t", settings=Settings, startup=startup, routers=[APIRouter()]),
                    settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        return await c.get("/readyz")


async def test_readyz_is_503_while_the_jwks_is_unreachable(adeployment: Settings) -> None:
    r = await _readyz(adeployment)
    assert r.status_code == 200, r.text
    dead = adeployment.model_copy(update={"auth_jwks_url": f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"})
    r = await _readyz(dead)
    assert r.status_code == 503, r.text
    assert any("JWKS unreachable" in p for p in r.json()["problems"]), r.json()
