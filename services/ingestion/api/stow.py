"""STOW-RS (PS3.18 §10.5): ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}``.

The body is read as a stream with a cap; each ``application/dicom`` part goes through the shared pipeline as soon as
it has arrived, concurrently with the rest of the upload. The answer is the PS3.18 store response:

- 200 when every instance was stored (or was already stored with the same content);
- 202 when some were stored and some failed; 409 when none was stored; 503 (Retry-After) when none was stored
  only because storage was unavailable (every failure is 0xA700 "retry later");
- 415 for a media type other than ``multipart/related; type="application/dicom"``; 413 past the body cap;
- 400 for a multipart body whose framing is broken (no boundary, no closing delimiter, no parts).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from services.ingestion.api.multipart import BodyTooLargeError, MultipartError, iter_parts, parse_media_type
from services.ingestion.domain.pipeline import IngestPipeline, IngestResult
from shared.auth import StoreUser
from shared.dicom.errors import CANNOT_UNDERSTAND, DicomRejection, TransientFailure
from shared.exceptions import InvalidUIDError
from shared.service import ContextDep
from shared.uids import validate_uid

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb", tags=["STOW-RS"])

DICOM_JSON = "application/dicom+json"


def _ui(v: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [v]}


def _base_url(request: Request) -> str:
    # Behind the entry proxy the Host header is the proxy's, so retrieve URLs point at the entry point.
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}/dicomweb"


def store_response(results: list[IngestResult | DicomRejection], base: str, study: str | None) -> dict[str, Any]:
    """The PS3.18 store-instances response dataset as DICOM JSON."""
    ok = [r for r in results if isinstance(r, IngestResult)]
    failed = [r for r in results if isinstance(r, DicomRejection)]
    body: dict[str, Any] = {}
    studies = {r.study_uid for r in ok}
    the_study = study or (next(iter(studies)) if len(studies) == 1 else None)
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


async def _store(request: Request, ctx: Any, principal: Any, study: str | None) -> JSONResponse:
    pipeline: IngestPipeline = ctx["pipeline"]
    settings = pipeline.settings
    mtype, params = parse_media_type(request.headers.get("content-type", ""))
    part_type = params.get("type", "application/dicom").lower()
    if mtype != "multipart/related" or part_type != "application/dicom":
        raise HTTPException(415, f"Content-Type {request.headers.get('content-type', '(none)')!r} is not supported; "
                            'send multipart/related; type="application/dicom".')
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_request_bytes:
        raise HTTPException(413, f"The request body is {length} bytes; at most {settings.max_request_bytes} bytes are "
                            "accepted.")
    sem = asyncio.Semaphore(max(2, pipeline.pool.workers * 2))
    tasks: list[asyncio.Task[IngestResult | DicomRejection]] = []

    async def one(data: bytes, ctype: str) -> IngestResult | DicomRejection:
        async with sem:
            if ctype and parse_media_type(ctype)[0] != "application/dicom":
                return DicomRejection(CANNOT_UNDERSTAND, f"A part has Content-Type {ctype!r}; expected "
                                      "application/dicom.", kind="part-media-type")
            try:
                return await pipeline.ingest(data, source="stow", expected_study=study)
            except DicomRejection as rej:
                return rej

    try:
        async for part in iter_parts(request.stream(), params.get("boundary", ""), max_body=settings.max_request_bytes,
                                     max_part=settings.max_instance_bytes):
            tasks.append(asyncio.create_task(one(part.body, part.content_type)))
    except BodyTooLargeError as exc:
        await _drain(tasks)
        raise HTTPException(413, f"The request body (or one part of it) exceeds {exc.limit} bytes.") from None
    except MultipartError as exc:
        await _drain(tasks)
        raise HTTPException(400, f"The multipart body is malformed: {exc}.") from None
    except BaseException:
        await _drain(tasks)
        raise
    if not tasks:
        raise HTTPException(400, "The multipart body holds no parts; send at least one application/dicom part.")
    results = list(await asyncio.gather(*tasks))
    stored = sum(isinstance(r, IngestResult) for r in results)
    status = 200 if stored == len(results) else (202 if stored else 409)
    headers: dict[str, str] = {}
    if not stored and all(isinstance(r, TransientFailure) for r in results):
        status, headers = 503, {"Retry-After": "5"}  # nothing was refused: storage was unavailable; send again
    # The audit record is not on the request path (it is not what makes the instances durable).
    task = asyncio.create_task(_audit(ctx, principal, study, len(results), stored))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return JSONResponse(store_response(results, _base_url(request), study), status_code=status, media_type=DICOM_JSON,
                        headers=headers)


_background: set[asyncio.Task[None]] = set()


async def _audit(ctx: Any, principal: Any, study: str | None, total: int, stored: int) -> None:
    try:
        await ctx.audit.record(principal, "store", {"study": study, "instances": total, "stored": stored},
                               outcome="success" if stored == total else "partial" if stored else "failure",
                               count=total)
    except Exception:
        log.exception("audit record failed")


async def _drain(tasks: list[asyncio.Task[Any]]) -> None:
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


#: PS3.18 store-response statuses, in the OpenAPI schema (and so in docs/api.md).
STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "some instances stored, some failed (each failure with its FailureReason)"},
    400: {"description": "malformed multipart body, or an invalid StudyInstanceUID in the path"},
    409: {"description": "no instance stored: each was refused (FailureReason per instance, e.g. 0x0111, 0xC000)"},
    413: {"description": "the body or one part exceeds the size limit"},
    415: {"description": "not multipart/related; type=\"application/dicom\""},
    503: {"description": "no instance stored because storage was unavailable (0xA700 each); retry after Retry-After"},
}


@router.post("/studies", summary="Store instances (STOW-RS).", response_class=JSONResponse, responses=STOW_RESPONSES)
async def store_instances(request: Request, ctx: ContextDep, principal: StoreUser) -> JSONResponse:
    return await _store(request, ctx, principal, None)


@router.post("/studies/{study}", summary="Store instances of one study (STOW-RS).", response_class=JSONResponse,
             responses=STOW_RESPONSES)
async def store_study_instances(study: str, request: Request, ctx: ContextDep, principal: StoreUser) -> JSONResponse:
    try:
        validate_uid(study, what="StudyInstanceUID")
    except InvalidUIDError as exc:
        raise HTTPException(400, f"{exc}.") from None
    return await _store(request, ctx, principal, study)
