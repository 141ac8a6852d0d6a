"""Tokens are accepted only in the ``Authorization`` header (issue 15 §1).

A token in the URL (``?token=``, ``?access_token=``) lands in access logs, proxy logs and browser history, where it can
be read and replayed. It is refused with a reason (401), alone *and* next to a valid header: a client that sends both
would otherwise keep leaking tokens into logs unnoticed, because its requests succeed.

The second test walks every authenticated route of every service's real app (``shared.topology.SERVICES``, each
built from its ``SPEC``; the routes' own dependencies resolve against a stand-in, so no AWS is needed): each one
refuses a URL token even with a valid admin header, so no service authenticates another way.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from shared.auth import ReadUser, current_principal, mint_token
from shared.service import ServiceSpec, build_app
from shared.settings import Settings
from shared.topology import SERVICES

URL_TOKENS = ("token", "access_token", "Token", "ACCESS_TOKEN")


def _app(settings: Settings) -> FastAPI:
    app = FastAPI()
    app.state.settings = settings

    @app.get("/dicomweb/studies")
    async def studies(_user: ReadUser) -> list[str]:
        return []

    return app


@pytest.mark.parametrize("name", URL_TOKENS)
async def test_a_url_token_is_refused_even_next_to_a_valid_header(tmp_path: Path, name: str) -> None:
    settings = Settings(environment="local", var_dir=tmp_path)
    token = mint_token(settings, "viewer")
    header = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(settings)), base_url="http://127.0.0.1") as c:
        assert (await c.get("/dicomweb/studies", headers=header)).status_code == 200  # the header alone is fine
        r = await c.get("/dicomweb/studies", params={"PatientID": "x", name: token}, headers=header)
        assert r.status_code == 401, r.text
        assert "Authorization header" in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        # An empty value is refused too: the parameter's presence is the client's mistake.
        assert (await c.get(f"/dicomweb/studies?{name}=", headers=header)).status_code == 401


class _Anything:
    """Stands in for a service's deps: every attribute is another stand-in, so route dependencies resolve."""

    def __getattr__(self, _name: str) -> Any:
        return _Anything()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Anything()


def _needs_auth(dependant: Dependant) -> bool:
    return any(d.call is current_principal or _needs_auth(d) for d in dependant.dependencies)


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute of a router's routes, those of routers it includes too (FastAPI keeps them nested)."""
    out: list[APIRoute] = []
    for r in routes:
        if isinstance(r, APIRoute):
            out.append(r)
        elif hasattr(r, "original_router"):
            out += _api_routes(r.original_router.routes)
    return out


def _path(template: str) -> str:
    return re.sub(r"\{[^}:]+(?::path)?\}", "1.2.3", template)


async def test_every_authenticated_route_of_every_service_refuses_a_url_token(tmp_path: Path) -> None:
    base = Settings(environment="local", var_dir=tmp_path)
    header = {"Authorization": f"Bearer {mint_token(base, 'admin')}"}
    checked: dict[str, int] = {}
    for service in SERVICES:
        spec: ServiceSpec[Any, Any] = importlib.import_module(f"services.{service}.bootstrap").SPEC
        app = build_app(spec, base)  # no lifespan: nothing starts, no AWS is reached
        app.state.deps = _Anything()
        routes = [r for router in spec.routers for r in _api_routes(router.routes) if _needs_auth(r.dependant)]
        checked[service] = len(routes)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            for route in routes:
                for method in sorted(route.methods or ()):
                    r = await c.request(method, _path(route.path), params={"token": "t"}, headers=header)
                    assert r.status_code == 401, f"{service} {method} {route.path}: {r.status_code} {r.text[:200]}"
                    assert "Authorization header" in r.json()["detail"]
    assert all(checked.values()), f"a service has no authenticated route, so the walk found nothing: {checked}"
