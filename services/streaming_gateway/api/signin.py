"""``/viewer/auth/...``: how the workstation signs in (served by the gateway, which serves the viewer itself).

- ``GET /viewer/auth/config``: public, no PHI: the environment, whether the development sign-in exists, and the
  OpenID Connect issuer and public client id the browser runs Authorization Code + PKCE against in production
  (``RADLOOP_VIEWER_OIDC_ISSUER`` defaulting to ``RADLOOP_AUTH_ISSUER``, ``RADLOOP_VIEWER_OIDC_CLIENT_ID``,
  ``RADLOOP_VIEWER_OIDC_SCOPE``; see :class:`~services.streaming_gateway.settings.GatewaySettings`).
- ``POST /viewer/auth/dev-token``: mints a development token for a chosen role, **only when environment=local**
  (404 otherwise, as if the route did not exist). The token is returned in the JSON body, never in a URL, so it is
  not logged by proxies or kept in the browser history.

Both routes are registered before the gateway mounts the built viewer at ``/viewer`` (routers come first in
:func:`shared.service.build_app`), so the static mount does not shadow them.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from services.streaming_gateway.settings import GatewaySettings
from shared.auth import ROLES, mint_token
from shared.exceptions import DomainError

router = APIRouter(prefix="/viewer/auth", tags=["workstation sign-in"])

#: Subjects the development sign-in accepts: an opaque user id, never a patient identifier.
_SUBJECT = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
#: Lifetime of a development token (a working day).
DEV_TOKEN_TTL_S = 8 * 3600


class DevTokenIn(BaseModel):
    """The development sign-in form: a role and a user id."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(max_length=32)
    name: str = Field(default="", max_length=64)


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings  # type: ignore[no-any-return]


@router.get("/config", summary="How the workstation signs in: OIDC issuer and client, or the local dev sign-in.")
async def auth_config(request: Request) -> dict[str, Any]:
    """Public sign-in configuration (no secret: a PKCE client has none)."""
    s = _settings(request)
    issuer = s.viewer_oidc_issuer or (s.auth_issuer if s.auth_jwks_url else "")
    local = s.environment == "local"
    return {
        "environment": s.environment,
        "dev_signin": local,
        "roles": list(ROLES) if local else [],
        "oidc": {"issuer": issuer.rstrip("/"), "client_id": s.viewer_oidc_client_id, "scope": s.viewer_oidc_scope,
                 "audience": s.auth_audience} if issuer and s.viewer_oidc_client_id else None,
    }


@router.post("/dev-token", summary="Local development only: mint a token for a chosen role (404 elsewhere).")
async def dev_token(body: DevTokenIn, request: Request) -> dict[str, Any]:
    """A development token for the chosen role; 404 unless environment=local."""
    s = _settings(request)
    if s.environment != "local":
        raise DomainError("Not Found", status=404)
    if body.role not in ROLES:
        raise DomainError(f"role must be one of {', '.join(ROLES)}", status=422)
    subject = body.name.strip() or f"local-{body.role}"
    if not _SUBJECT.match(subject):
        raise DomainError("name: 1-64 letters, digits, '.', '_', '@' or '-' (a user id, not a patient's name)",
                          status=422)
    token = mint_token(s, body.role, subject=subject, ttl_s=DEV_TOKEN_TTL_S)
    return {"access_token": token, "token_type": "Bearer", "expires_in": DEV_TOKEN_TTL_S, "subject": subject,
            "roles": [body.role]}
