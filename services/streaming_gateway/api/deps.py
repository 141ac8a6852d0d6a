"""Dependencies and helpers shared by the gateway's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.streaming_gateway.domain.errors import BadRequest, Unavailable
from services.streaming_gateway.domain.gateway import Gateway
from shared.auth import Principal
from shared.exceptions import InvalidUIDError
from shared.uids import validate_uid

DICOM_JSON = "application/dicom+json"


async def get_gateway(request: Request) -> Gateway:
    # async: a plain function dependency would cost a thread-pool hop on every frame request.
    return request.app.state.ctx.extras["gateway"]  # type: ignore[no-any-return]


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def uid(value: str, what: str) -> str:
    """A path UID, validated (400 with the reason otherwise)."""
    try:
        return validate_uid(value, what=what)
    except InvalidUIDError as exc:
        raise BadRequest(str(exc)) from None


def base_url(request: Request) -> str:
    """The DICOMweb base URL as the client sees it (honours the entry proxy's X-Forwarded-* headers)."""
    proto = request.headers.get("x-forwarded-proto") or request.url.scheme
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or request.url.netloc
    return f"{proto}://{host}/dicomweb"


async def audit(request: Request, principal: Principal, action: str, resource: dict[str, object], count: int = 1) -> None:
    """Write the audit record before PHI leaves; if the audit log cannot be written, nothing is sent (503)."""
    try:
        await request.app.state.ctx.audit.record(principal, action, resource, count=count)
    except Exception:
        raise Unavailable("the audit log is unavailable, so no patient data can be returned; retry later") from None
