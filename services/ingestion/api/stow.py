"""STOW-RS (PS3.18 §10.5): ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}``.

The body is read as a stream with a cap; each ``application/dicom`` part goes through the shared pipeline as soon as
it has arrived, concurrently with the rest of the upload. The answer is the PS3.18 store response:

- 200 when every instance was stored (or was already stored with the same content);
- 202 when some were stored and some failed; 409 when none was stored; 503 (Retry-After) when none was stored
  only because storage was unavailable (every failure is 0xA700 "retry later");
- 415 for a media type other than ``multipart/related; type="application/dicom"``; 413 past the body cap or past
  ``max_stow_parts`` parts;
- 503 (Retry-After, 0xA700 for every instance) when the audit record of the request cannot be written: nothing is
  acknowledged before its audit record is durable.

Back-pressure: at most ``stow_max_inflight_parts`` parts are processed at once; the body is not read further until
one finishes, so memory holds a bounded number of parts, never the whole body.
- 400 for a multipart body whose framing is broken (no boundary, no closing delimiter, no parts).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.ingestion.api.deps import DepsDep
from services.ingestion.api.multipart import BodyTooLargeError, MultipartError, iter_parts, parse_media_type
from services.ingestion.domain.errors import MalformedRequestError, RequestTooLargeError, UnsupportedMediaTypeError
from services.ingestion.service import IngestResult
from shared.auth import StoreUser
from shared.dicom.errors import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, DicomRejection, TransientFailure
from shared.exceptions import InvalidUIDError
from shared.forwarded import ForwardingSettings, request_origin
from shared.service import loop_time
from shared.uids import validate_uid

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb", tags=["STOW-RS"])

DICOM_JSON = "application/dicom+json"


def _ui(v: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [v]}


def _base_url(request: Request, settings: ForwardingSettings) -> str:
    """The DICOMweb base URL as the client sees it, for the RetrieveURLs of the store response.

    Forwarded headers (the entry proxy's X-Forwarded-Host) count only from ``trusted_proxies``, judged by the
    connection's peer address (``shared/forwarded.py``); otherwise ``public_base_url`` or the request's own Host.
    """
    return f"{request_origin(request, settings)}/dicomweb"


def store_response(results: list[IngestResult | DicomRejection], base: str, study: str | None) -> dict[str, Any]:
    """The PS3.18 store-instances response dataset as DICOM JSON."""
    ok = [r for r in results if isinstance(r, IngestResult)]
    failed = [r for r in results if isinstance(r, DicomRejection)]
    body: dict[str, Any] = {}
    studies = {r.study_uid for r in ok}
    # The study's URL only when something was stored in it (a request to the wrong study's URL, all refused, named
    # that study, where nothing was stored: found by a review, session 22).
    the_study = (study or (next(iter(studies)) if len(studies) == 1 else None)) if ok else None
    if the_study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{the_study}"]}
    if failed:
        items = []
        for f in failed:
            item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [f.failure_reason]},
                                    "00000902": {"vr": "LO", "Value": [f.reason]}}
            if f.sop_class_uid:
                item["00081150"] = _ui(f.sop_class_uid)
            if f.sop_uid:
                item["00081155"] = _ui(f.sop_uid)
            items.append(dict(sorted(item.items())))
        body["00081198"] = {"vr": "SQ", "Value": items}
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": [{
            "00081150": _ui(r.sop_class_uid), "00081155": _ui(r.sop_uid),
            "00081190": {"vr": "UR", "Value": [f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"]},
        } for r in ok]}
    return dict(sorted(body.items()))


async def _store(request: Request, deps: DepsDep, principal: Any, study: str | None) -> JSONResponse:
    pipeline = deps.pipeline
    settings = pipeline.settings
    mtype, params = parse_media_type(request.headers.get("content-type", ""))
    part_type = params.get("type", "application/dicom").lower()
    if mtype != "multipart/related" or part_type != "application/dicom":
        raise UnsupportedMediaTypeError(f"Content-Type {request.headers.get('content-type', '(none)')!r} is not supported; "
                                        'send multipart/related; type="application/dicom".')
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_request_bytes:
        raise RequestTooLargeError(f"The request body is {length} bytes; at most {settings.max_request_bytes} bytes "
                                   "are accepted.")
    # Back-pressure: at most `inflight` parts are being processed at once, and the body is not read further until
    # one of them finishes, so a fast sender waits on TCP instead of the process holding its whole body in memory.
    inflight = settings.stow_max_inflight_parts or max(2, pipeline.pool.workers * 2)
    sem = asyncio.Semaphore(inflight)
    tasks: list[asyncio.Task[IngestResult | DicomRejection]] = []

    async def one(data: bytes, ctype: str) -> IngestResult | DicomRejection:
        try:
            if ctype and parse_media_type(ctype)[0] != "application/dicom":
                return DicomRejection(CANNOT_UNDERSTAND, f"A part has Content-Type {ctype!r}; expected "
                                      "application/dicom.", kind="part-media-type")
            try:
                return await pipeline.ingest(data, source="stow", expected_study=study)
            except DicomRejection as rej:
                return rej
        finally:
            sem.release()

    try:
        async for part in iter_parts(request.stream(), params.get("boundary", ""), max_body=settings.max_request_bytes,
                                     max_part=settings.max_instance_bytes):
            if len(tasks) >= settings.max_stow_parts:
                raise TooManyPartsError(settings.max_stow_parts)
            await sem.acquire()  # released by `one` when the part is done
            tasks.append(asyncio.create_task(one(part.body, part.content_type)))
    except TooManyPartsError as exc:
        await _drain(tasks)
        raise RequestTooLargeError(f"The request holds more than {exc.limit} parts; send at most {exc.limit} "
                                   "instances per request (instances already stored from it are acknowledged as "
                                   "duplicates when sent again).") from None
    except BodyTooLargeError as exc:
        await _drain(tasks)
        raise RequestTooLargeError(f"The request body (or one part of it) exceeds {exc.limit} bytes.") from None
    except MultipartError as exc:
        await _drain(tasks)
        raise MalformedRequestError(f"The multipart body is malformed: {exc}.") from None
    except BaseException:  # cancelled (the client went away, or SIGTERM's graceful window ended)
        await _drain(tasks, deadline=getattr(request.app.state, "drain_deadline", None))
        raise
    if not tasks:
        raise MalformedRequestError("The multipart body holds no parts; send at least one application/dicom part.")
    results = list(await asyncio.gather(*tasks))
    stored = sum(isinstance(r, IngestResult) for r in results)
    headers: dict[str, str] = {}
    # The audit record is durable before the answer: when it cannot be written, nothing is acknowledged (every
    # stored instance is answered 0xA700 and the request 503, so the sender retries; the retry is a duplicate).
    try:
        await pipeline.audit(principal, "store", {"study": study, "instances": len(results), "stored": stored},
                             outcome="success" if stored == len(results) else "partial" if stored else "failure",
                             count=len(results))
    except TransientFailure as exc:
        results = [_unacknowledged(r, exc) if isinstance(r, IngestResult) else r for r in results]
        return JSONResponse(store_response(results, _base_url(request, settings), study), status_code=503,
                            media_type=DICOM_JSON, headers={"Retry-After": "5"})
    status = 200 if stored == len(results) else (202 if stored else 409)
    if not stored and all(isinstance(r, TransientFailure) for r in results):
        status, headers = 503, {"Retry-After": "5"}  # nothing was refused: storage was unavailable; send again
    return JSONResponse(store_response(results, _base_url(request, settings), study), status_code=status,
                        media_type=DICOM_JSON, headers=headers)


class TooManyPartsError(Exception):
    """The request holds more parts than ``max_stow_parts``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} parts")
        self.limit = limit


def _unacknowledged(r: IngestResult, cause: TransientFailure) -> TransientFailure:
    return TransientFailure(OUT_OF_RESOURCES, cause.reason, kind=cause.kind, sop_uid=r.sop_uid,
                            sop_class_uid=r.sop_class_uid, study_uid=r.study_uid)


async def _drain(tasks: list[asyncio.Task[Any]], *, deadline: float | None = None) -> None:
    """Let the parts already being stored finish (each is bounded by its own timeouts), but not past ``deadline``
    (``shared.service.loop_time()``, set on SIGTERM): parts still running then are cancelled. Nothing of this request
    has been acknowledged, so the sender sends it again; instances already stored come back as duplicates."""
    if not tasks:
        return
    if deadline is None:
        await asyncio.gather(*tasks, return_exceptions=True)
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop_time()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


#: PS3.18 store-response statuses, in the OpenAPI schema (and so in docs/api.md).
STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "some instances stored, some failed (each failure with its FailureReason)"},
    400: {"description": "malformed multipart body, or an invalid StudyInstanceUID in the path"},
    409: {"description": "no instance stored: each was refused (FailureReason per instance, e.g. 0x0111, 0xC000)"},
    413: {"description": "the body or one part exceeds the size limit, or the body holds too many parts"},
    415: {"description": "not multipart/related; type=\"application/dicom\""},
    503: {"description": "no instance acknowledged because storage (or the audit table) was unavailable, or another "
                         "upload of the same instance is in progress (0xA700 each); retry after Retry-After"},
}


@router.post("/studies", summary="Store instances (STOW-RS).", response_class=JSONResponse, responses=STOW_RESPONSES)
async def store_instances(request: Request, deps: DepsDep, principal: StoreUser) -> JSONResponse:
    """Store the instances of a multipart/related body; the answer is the PS3.18 store response."""
    return await _store(request, deps, principal, None)


@router.post("/studies/{study}", summary="Store instances of one study (STOW-RS).", response_class=JSONResponse,
             responses=STOW_RESPONSES)
async def store_study_instances(study: str, request: Request, deps: DepsDep, principal: StoreUser) -> JSONResponse:
    """Store instances that must all belong to ``study`` (0xA900 for any that does not)."""
    try:
        validate_uid(study, what="StudyInstanceUID")
    except InvalidUIDError as exc:
        raise MalformedRequestError(f"{exc}.") from None
    return await _store(request, deps, principal, study)
