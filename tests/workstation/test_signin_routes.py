"""``/viewer/auth/*`` (services/streaming_gateway/api/signin.py), through the gateway's real app built from its SPEC:
the development sign-in exists only locally, and the OIDC client is announced from the gateway's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.streaming_gateway.bootstrap import SPEC
from services.streaming_gateway.settings import GatewaySettings
from shared.auth import verify_token
from shared.service import build_app


def client(settings: GatewaySettings) -> TestClient:
    # No lifespan (no AWS): the sign-in routes use only the settings, never the gateway's dependencies.
    return TestClient(build_app(SPEC, settings))


def test_local_mints_a_token_for_the_chosen_role(tmp_path: Path) -> None:
    s = GatewaySettings(environment="local", var_dir=tmp_path, viewer_dist=tmp_path)
    c = client(s)
    cfg = c.get("/viewer/auth/config").json()
    assert cfg["dev_signin"] is True and "radiologist" in cfg["roles"] and cfg["oidc"] is None
    r = c.post("/viewer/auth/dev-token", json={"role": "radiologist", "name": "dr-x"})
    assert r.status_code == 200
    p = verify_token(s, r.json()["access_token"])
    assert p.subject == "dr-x" and p.roles == ("radiologist",)
    assert c.post("/viewer/auth/dev-token", json={"role": "god"}).status_code == 422
    # a user id, not a patient's name
    assert c.post("/viewer/auth/dev-token", json={"role": "ml", "name": "Doe^John 1970"}).status_code == 422


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_outside_local_there_is_no_dev_sign_in(env: str, tmp_path: Path) -> None:
    s = GatewaySettings(environment=env, var_dir=tmp_path, viewer_dist=tmp_path,
                        auth_jwks_url="https://idp.example/jwks", auth_issuer="https://idp.example/",
                        auth_audience="radloop-api", pseudonym_key="a-real-key-for-this-test",
                        viewer_oidc_client_id="radloop-workstation")
    c = client(s)
    assert c.post("/viewer/auth/dev-token", json={"role": "admin"}).status_code == 404
    cfg = c.get("/viewer/auth/config").json()
    assert cfg["dev_signin"] is False and cfg["roles"] == []
    assert cfg["oidc"] == {"issuer": "https://idp.example", "client_id": "radloop-workstation",
                           "scope": "openid profile", "audience": "radloop-api"}
