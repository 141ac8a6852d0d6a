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

import asyncio
import time
from collections import OrderedDict
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
        """The most privileged role, for audit records (a role of no token, such as ``dimse`` for a DICOM peer, is
        written as it is; it was written as "none": found by a review)."""
        for r in reversed(ROLES):
            if r in self.roles:
                return r
        return self.roles[0] if self.roles else "none"

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
def _jwks_client(url: str, cooldown_s: float = 5.0) -> jwt.PyJWKClient:
    # The key set is cached for 5 minutes, so a key the identity provider withdraws stops verifying within that
    # time; no per-key cache (it never expires). An unknown kid re-fetches the set (a rotation), at most once per
    # cooldown, so tokens with made-up kids cannot make every request hit the identity provider.
    return jwt.PyJWKClient(url, cache_keys=False, lifespan=300, cooldown_duration=cooldown_s, timeout=5)


def verify_token(settings: Settings, token: str) -> Principal:
    """Verify a JWT and return its principal, or raise HTTP 401 with the reason."""
    return _verify(settings, token)[0]


def _verify(settings: Settings, token: str) -> tuple[Principal, float]:
    """The principal of a verified JWT and its ``exp`` (seconds since the epoch); HTTP 401 with the reason otherwise."""
    if settings.environment != "local" and settings.auth_signing_key == DEV_SIGNING_KEY and not settings.auth_jwks_url:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the development key is not accepted outside local")
    try:
        if settings.auth_jwks_url:
            key: Any = _jwks_client(settings.auth_jwks_url, settings.auth_jwks_refresh_cooldown_s).get_signing_key_from_jwt(
                token).key
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
    return Principal(subject=str(claims["sub"]), roles=tuple(r for r in roles if r in ROLES)), float(claims["exp"])


_JWKS_CHECK_TTL_S = 30.0
_jwks_checked: dict[str, tuple[float, str | None]] = {}


async def jwks_problem(settings: Settings) -> str | None:
    """Readiness: None when the identity provider's JWKS answers with at least one key (cached 30 s), else why not.

    A service that cannot fetch the keys would answer 401 to every real user, so it must not take traffic.
    """
    url = settings.auth_jwks_url
    if not url:
        return None
    now = time.monotonic()
    hit = _jwks_checked.get(url)
    if hit is not None and now - hit[0] < _JWKS_CHECK_TTL_S:
        return hit[1]
    try:
        keys = await asyncio.to_thread(
            lambda: _jwks_client(url, settings.auth_jwks_refresh_cooldown_s).get_jwk_set(refresh=True).keys)
        problem = None if keys else "JWKS has no usable keys"
    except Exception as exc:  # any failure to fetch or parse is a not-ready reason
        problem = f"JWKS unreachable: {type(exc).__name__}"
    _jwks_checked[url] = (now, problem)
    return problem


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": 'Bearer realm="radloop"'})


#: Query parameters that carry a token (compared in lower case); their presence alone gets 401.
URL_TOKEN_PARAMS = frozenset({"token", "access_token"})


def bearer_token(request: Request) -> str:
    """The bearer token of the ``Authorization`` header; nothing else is accepted.

    A token in a query string (``?token=``, ``?access_token=``, any letter case) lands in access logs, proxy logs and
    browser history, where it can be read and replayed, so it is refused with a reason rather than silently ignored,
    also when a valid header comes with it: a client that sends both would otherwise go on leaking tokens into logs
    unnoticed, because its requests succeed.
    """
    if any(k.lower() in URL_TOKEN_PARAMS for k in request.query_params):
        raise _unauthorized("tokens are accepted only in the Authorization header, never in the URL")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    raise _unauthorized("missing bearer token")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


class VerifiedTokens:
    """Tokens this app verified recently, so a viewer's stream of frame requests is not verified once per frame.

    An entry is reused for at most ``ttl_s`` and never past the token's ``exp``: a token stays accepted no longer
    than its own lifetime, and a signing key the identity provider withdraws stops working within the JWKS cache's
    5 minutes plus ``ttl_s``. The whole token (signature included) is the key, so only the very token that was
    verified matches. At most ``max_entries`` are kept (the oldest go first).
    """

    def __init__(self, max_entries: int = 4096, ttl_s: float = 60.0) -> None:
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    def get(self, token: str) -> Principal | None:
        hit = self._entries.get(token)
        if hit is None:
            return None
        if time.time() >= hit[0]:
            del self._entries[token]
            return None
        return hit[1]

    def put(self, token: str, principal: Principal, exp: float) -> None:
        self._entries[token] = (min(exp, time.time() + self.ttl_s), principal)
        self._entries.move_to_end(token)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


async def current_principal(request: Request) -> Principal:
    """The caller, from the bearer token (async: a plain function dependency costs a thread-pool hop per request).

    A token verified by this app within the last minute is not verified again (:class:`VerifiedTokens`). HS256
    verification is microseconds and runs here; with a JWKS it may fetch the key set, so it runs in a thread.
    """
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    token = bearer_token(request)
    state = request.app.state
    tokens: VerifiedTokens | None = getattr(state, "verified_tokens", None)
    if tokens is None:
        tokens = state.verified_tokens = VerifiedTokens()
    remembered = tokens.get(token)
    if remembered is not None:
        principal = remembered
    else:
        settings = get_settings(request)
        if settings.auth_jwks_url:
            principal, exp = await asyncio.to_thread(_verify, settings, token)
        else:
            principal, exp = _verify(settings, token)
        tokens.put(token, principal, exp)
    request.state.principal = principal
    return principal


def require(permission: str) -> Any:
    """A dependency that authenticates the caller and checks one permission."""

    async def dep(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
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
