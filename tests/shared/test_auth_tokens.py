"""Token verification that fails closed: alg=none, HS/RS confusion, issuer, audience, expiry, JWKS rotation, and
settings that refuse to run production without the identity provider's issuer, audience and JWKS URL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import HTTPException

from shared.auth import _jwks_client, jwks_problem, mint_token, verify_token
from shared.settings import Settings


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Jwks:
    """A JWKS endpoint on 127.0.0.1 whose key set a test can rotate."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.fetches += 1
                body = json.dumps({"keys": [
                    {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": kid, "use": "sig",
                     "alg": "RS256"} for kid, k in outer.keys.items()]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, kid: str, **claims: Any) -> str:
        now = int(time.time())
        base = {"sub": "u1", "roles": ["viewer"], "iss": "https://idp.hospital.test", "aud": "radloop-prod",
                "iat": now, "exp": now + 600}
        return jwt.encode({**base, **claims}, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    j = Jwks()
    j.keys["k1"] = _rsa()
    _jwks_client.cache_clear()
    try:
        yield j
    finally:
        j.server.shutdown()
        j.server.server_close()


def _oidc(jwks: Jwks) -> Settings:
    # environment=local only because the test endpoint is plain http on loopback; verification is the production path
    return Settings(environment="local", auth_jwks_url=jwks.url, auth_issuer="https://idp.hospital.test",
                    auth_audience="radloop-prod", auth_jwks_refresh_cooldown_s=0.5)


def _rejected(settings: Settings, token: str) -> str:
    with pytest.raises(HTTPException) as info:
        verify_token(settings, token)
    assert info.value.status_code == 401
    return str(info.value.detail)


def test_a_valid_rs256_token_from_the_jwks_is_accepted(jwks: Jwks) -> None:
    p = verify_token(_oidc(jwks), jwks.token("k1"))
    assert p.subject == "u1" and p.roles == ("viewer",)


def test_alg_none_is_rejected(jwks: Jwks) -> None:
    now = int(time.time())
    unsigned = jwt.encode({"sub": "u1", "roles": ["admin"], "iss": "https://idp.hospital.test", "aud": "radloop-prod",
                           "exp": now + 600}, key=None, algorithm="none")
    _rejected(_oidc(jwks), unsigned)
    local = Settings(environment="local")
    _rejected(local, jwt.encode({"sub": "u1", "roles": ["admin"], "iss": local.auth_issuer,
                                 "aud": local.auth_audience, "exp": now + 600}, key=None, algorithm="none"))


def test_hs256_signed_with_the_public_key_is_rejected(jwks: Jwks) -> None:
    """The classic confusion: the RSA public key (which anyone can fetch) used as an HMAC secret."""
    pem = jwks.keys["k1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    claims = {"sub": "u1", "roles": ["admin"], "iss": "https://idp.hospital.test", "aud": "radloop-prod",
              "exp": now + 600}
    forged = _hmac_token(claims, pem)  # built by hand: PyJWT itself refuses to HMAC with a PEM key
    _rejected(_oidc(jwks), forged)


def _hmac_token(claims: dict[str, Any], secret: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_wrong_issuer_audience_and_expiry_are_rejected(jwks: Jwks) -> None:
    s = _oidc(jwks)
    assert "issuer" in _rejected(s, jwks.token("k1", iss="https://evil.test")).lower()
    assert "audience" in _rejected(s, jwks.token("k1", aud="someone-else")).lower()
    assert "expired" in _rejected(s, jwks.token("k1", exp=int(time.time()) - 5))
    local = Settings(environment="local")
    assert "issuer" in _rejected(local, mint_token(local.model_copy(update={"auth_issuer": "x"}), "viewer")).lower()


def test_a_rotated_key_is_picked_up_without_a_restart(jwks: Jwks) -> None:
    s = _oidc(jwks)
    verify_token(s, jwks.token("k1"))
    jwks.keys = {"k2": _rsa()}  # the identity provider rotates: k1 is withdrawn, k2 signs from now on
    time.sleep(0.6)  # past the refresh cooldown (5 s by default)
    p = verify_token(s, jwks.token("k2"))  # an unknown kid makes the client fetch the set again
    assert p.subject == "u1"
    assert jwks.fetches >= 2


async def test_readiness_reports_an_unreachable_jwks(jwks: Jwks) -> None:
    s = _oidc(jwks)
    assert await jwks_problem(s) is None
    dead = Settings(environment="local", auth_jwks_url="http://127.0.0.1:9/jwks.json")
    assert "JWKS unreachable" in (await jwks_problem(dead) or "")


def test_settings_require_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADLOOP_ENVIRONMENT", raising=False)
    with pytest.raises(ValueError, match="RADLOOP_ENVIRONMENT is required"):
        Settings()


@pytest.mark.parametrize("override,needle", [
    ({}, "RADLOOP_AUTH_JWKS_URL"),
    ({"auth_jwks_url": "https://login.example-hospital.org/.well-known/jwks.json"}, "RADLOOP_AUTH_JWKS_URL"),
    ({"auth_jwks_url": "https://idp.h.org/jwks"}, "RADLOOP_AUTH_ISSUER"),
    ({"auth_jwks_url": "https://idp.h.org/jwks", "auth_issuer": "https://idp.h.org"}, "RADLOOP_AUTH_AUDIENCE"),
    ({"auth_jwks_url": "http://idp.h.org/jwks", "auth_issuer": "https://idp.h.org", "auth_audience": "radloop-h"},
     "https://"),
])
def test_production_refuses_missing_or_placeholder_identity_settings(override: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Settings(environment="prod", pseudonym_key="s3cret-pseudonym", **override)


def test_production_starts_with_the_identity_providers_values() -> None:
    s = Settings(environment="prod", pseudonym_key="s3cret-pseudonym", auth_jwks_url="https://idp.h.org/jwks",
                 auth_issuer="https://idp.h.org", auth_audience="radloop-h")
    assert s.environment == "prod"
