"""Dependencies and helpers shared by the gateway's routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from services.streaming_gateway.domain.errors import BadRequest, Unavailable
from services.streaming_gateway.service import Gateway
from shared.auth import Principal
from shared.exceptions import InvalidUIDError
from shared.forwarded import request_origin
from shared.service import get_deps
from shared.uids import validate_uid

if TYPE_CHECKING:  # bootstrap imports the routes to declare the service; FastAPI needs only the dependency
    from services.streaming_gateway.bootstrap import StreamingGatewayDeps

DICOM_JSON = "application/dicom+json"


DepsDep = Annotated["StreamingGatewayDeps", Depends(get_deps)]


async def get_gateway(request: Request) -> Gateway:
    """The service object (the routes' only collaborator)."""
    # async: a plain function dependency would cost a thread-pool hop on every frame request.
    return get_deps(request).gateway  # type: ignore[no-any-return]


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def uid(value: str, what: str) -> str:
    """A path UID, validated (400 with the reason otherwise)."""
    try:
        return validate_uid(value, what=what)
    except InvalidUIDError as exc:
        raise BadRequest(str(exc)) from None


def base_url(request: Request, gw: Gateway) -> str:
    """The DICOMweb base URL as the client sees it, for RetrieveURLs.

    Forwarded headers count only from ``trusted_proxies`` (see ``shared/forwarded.py``), judged by the connection's
    peer address: ``__main__`` turns off uvicorn's own X-Forwarded-For/-Proto rewriting, so ``request.client`` and
    ``request.url.scheme`` are the connection's, never a header's.
    """
    return f"{request_origin(request, gw.settings)}/dicomweb"


#: The answer to a read of PHI whose audit record cannot be written (503).
AUDIT_UNAVAILABLE = "the audit log is unavailable, so no patient data can be returned; retry later"


async def audit(request: Request, principal: Principal, action: str, resource: dict[str, object], count: int = 1) -> None:
    """Write the audit record before PHI leaves; if the audit log cannot be written, nothing is sent (503)."""
    try:
        await get_deps(request).rt.audit.record(principal, action, resource, count=count)
    except Exception:
        raise Unavailable(AUDIT_UNAVAILABLE) from None


async def audit_image_read(gw: Gateway, principal: Principal, study: str, series: str, frames: int,
                           action: str) -> None:
    """Audit an image read (frames, rendered, thumbnail) before it is served, coalesced per series and window
    (:class:`~services.streaming_gateway.adapters.audit.FrameAuditCoalescer`); 503 as :func:`audit`."""
    try:
        await gw.frame_audit.note(principal, study, series, frames, action)
    except Exception:
        raise Unavailable(AUDIT_UNAVAILABLE) from None


def accept_of(request: Request) -> str | None:
    """The media types the client accepts: the ``accept`` query parameter when present (PS3.18 §8.3.3.1, for
    clients that cannot set headers, such as a link in a browser; several are joined), else the Accept header. It was
    ignored (found by a review, session 22)."""
    values = request.query_params.getlist("accept")
    return ", ".join(values) if values else request.headers.get("accept")
