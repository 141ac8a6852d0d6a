"""Bearer-token authentication and role-based authorisation for the HTTP services.

Tokens are JWTs. In AWS they come from the hospital's OIDC provider and are verified against its JWKS
(``RADLOOP_AUTH_JWKS_URL``, RS256/ES256). Locally they are HS256 tokens signed with the development key, which
``radloop token --role ROLE`` mints; settings refuse that key outside ``environment=local``.

Roles and what they may do:

=============  ======================================
role           may
=============  ======================================
pacs           store
viewer         read
radiologist    read, verify
ml             read, approve models
admin          everything
=============  ======================================

Each permission is a FastAPI dependency (``StoreUser``, ``ReadUser``, ``VerifyUser``, ``ApproveUser``,
``AdminUser``). A missing, malformed or expired token gets 401; a valid token without the permission gets 403.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status

from shared.settings import DEV_SIGNING_KEY, Settings

ROLES = ("pacs", "viewer", "radiologist", "ml", "admin")
PERMISSIONS: dict[str, frozenset[str]] = {
    "pacs": frozenset({"store"}),
    "viewer": frozenset({"read"}),
    "radiologist": frozenset({"read", "verify"}),
    "ml": frozenset({"read", "approve"}),
    "admin": frozenset({"store", "read", "verify", "approve", "admin"}),
}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. ``subject`` is an opaque user id, never a patient identifier."""

    subject: str
    roles: tuple[str, ...]

    @property
    def permissions(self) -> frozenset[str]:
        out: set[str] = set()
        for r in self.roles:
            out |= PERMISSIONS.get(r, frozenset())
        return frozenset(out)

    @property
    def role(self) -> str:
        """The most privileged role, for audit records."""
        for r in reversed(ROLES):
            if r in self.roles:
                return r
        return "none"

    def can(self, permission: str) -> bool:
        return permission in self.permissions


def mint_token(
    settings: Settings, role: str | list[str], *, subject: str | None = None, ttl_s: int = 12 * 3600
) -> str:
    """Mint an HS256 token with the configured key (local development and tests)."""
    roles = [role] if isinstance(role, str) else list(role)
    for r in roles:
        if r not in ROLES:
            raise ValueError(f"unknown role {r!r}; choose one of {', '.join(ROLES)}")
    now = int(time.time())
    claims = {
        "sub": subject or f"local-{roles[0]}",
        "roles": roles,
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, settings.auth_signing_key, algorithm="HS256")


@lru_cache(maxsize=4)
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=3600)


def verify_token(settings: Settings, token: str) -> Principal:
    """Verify a JWT and return its principal, or raise HTTP 401 with the reason."""
    if settings.environment != "local" and settings.auth_signing_key == DEV_SIGNING_KEY and not settings.auth_jwks_url:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the development key is not accepted outside local")
    try:
        if settings.auth_jwks_url:
            key: Any = _jwks_client(settings.auth_jwks_url).get_signing_key_from_jwt(token).key
            algorithms = ["RS256", "ES256"]
        else:
            key, algorithms = settings.auth_signing_key, ["HS256"]
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.PyJWTError as exc:
        raise _unauthorized(f"invalid token: {exc}") from None
    roles = claims.get("roles") or claims.get("cognito:groups") or []
    if isinstance(roles, str):
        roles = roles.split()
    return Principal(subject=str(claims["sub"]), roles=tuple(r for r in roles if r in ROLES))


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": 'Bearer realm="radloop"'})


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    # Viewers that cannot set headers (an <img> tag, a WebSocket) may pass ?token=...
    token = request.query_params.get("token") or request.query_params.get("access_token")
    if token:
        return token
    raise _unauthorized("missing bearer token")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def current_principal(request: Request) -> Principal:
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    principal = verify_token(get_settings(request), bearer_token(request))
    request.state.principal = principal
    return principal


def require(permission: str) -> Any:
    """A dependency that authenticates the caller and checks one permission."""

    def dep(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.can(permission):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role(s) {', '.join(principal.roles) or '(none)'} may not {permission}",
            )
        return principal

    dep.__name__ = f"require_{permission}"
    return Depends(dep)


StoreUser = Annotated[Principal, require("store")]
ReadUser = Annotated[Principal, require("read")]
VerifyUser = Annotated[Principal, require("verify")]
ApproveUser = Annotated[Principal, require("approve")]
AdminUser = Annotated[Principal, require("admin")]
