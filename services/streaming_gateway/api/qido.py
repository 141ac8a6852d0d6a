"""QIDO-RS routes (PS3.18 §10.6), served from the instance index only."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from services.streaming_gateway.api.deps import DICOM_JSON, GatewayDep, accept_of, audit, base_url, uid
from services.streaming_gateway.domain import qido
from services.streaming_gateway.domain.errors import NotAcceptable
from services.streaming_gateway.domain.media import parse_accept
from services.streaming_gateway.domain.search import SearchResult
from services.streaming_gateway.service import Gateway
from shared.auth import ReadUser

router = APIRouter(prefix="/dicomweb", tags=["QIDO-RS"])
#: Characters of an ignored query key written as they are in the Warning header (the rest percent-encoded; the
#: header's quoted string may not hold a quote or a backslash).
_HEADER_SAFE = "!#$&'()*+,-./:;<=>?@[]^_`{|}~"


def _check_accept(request: Request) -> None:
    for r in parse_accept(accept_of(request)):
        if r.type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable(
        f"search results are served as {DICOM_JSON}; the accepted media types {accept_of(request)!r} exclude it"
    )


def _respond(result: SearchResult, q: qido.Query) -> Response:
    headers = {}
    warnings = []
    if result.truncated:
        warnings.append('299 radloop "There are additional results that can be requested with offset and limit."')
    if q.ignored:
        # Percent-encoded as in a URL: a key the client sent may hold any character, and a header may not (a
        # non-Latin-1 key was a 500, a newline a dropped connection; found by a review).
        names = ", ".join(sorted({quote(k, safe=_HEADER_SAFE) for k in q.ignored}))[:200]
        warnings.append(f'299 radloop "The following query keys are not supported and were ignored: {names}."')
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    return Response(result.body(), media_type=DICOM_JSON, headers=headers)


async def _search(request: Request, gw: GatewayDep, principal: ReadUser, level: str, fixed: dict[str, str]) -> Response:
    _check_accept(request)
    q = qido.parse_query(level, request.query_params.multi_items(), fixed=fixed,
                         max_offset=gw.settings.qido_max_offset)
    base = base_url(request, gw)
    if level == "STUDY":
        result = await gw.searcher.studies(q, base)
    elif level == "SERIES":
        result = await gw.searcher.series(q, base)
    else:
        result = await gw.searcher.instances(q, base)
    # Search results carry patient names and IDs: audit who searched, at which level, how much came back. The
    # query values themselves are never recorded (they may hold a patient name).
    resource: dict[str, object] = {"level": level.lower(), **{k: v for k, v in fixed.items()}}
    await audit(request, principal, "qido.search", resource, count=result.count)
    return _respond(result, q)


@router.get("/studies", summary="Search for studies.")
async def search_studies(request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    return await _search(request, gw, principal, "STUDY", {})


@router.get("/series", summary="Search for series.")
async def search_series(request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    return await _search(request, gw, principal, "SERIES", {})


@router.get("/instances", summary="Search for instances.")
async def search_instances(request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    return await _search(request, gw, principal, "INSTANCE", {})


@router.get("/studies/{study}/series", summary="Search for series of a study.")
async def search_study_series(study: str, request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    s = uid(study, "StudyInstanceUID")
    response = await _search(request, gw, principal, "SERIES", {"StudyInstanceUID": s})
    # A viewer that lists a study's series asks for their metadata next: load the first few into the series cache.
    _warm_series(gw, s)
    return response


_warming: set[asyncio.Task[None]] = set()
#: Studies whose series were warmed (or are being warmed), with when: at most one warm-up per study per
#: WARM_AGAIN_S, however many searches list its series (the metadata request loads anything changed since).
_warmed: OrderedDict[str, float] = OrderedDict()
WARM_AGAIN_S = 60.0
_WARMED_MAX = 10_000


def _warm_series(gw: Gateway, study: str, at_most: int = 4) -> None:
    now = time.monotonic()
    last = _warmed.get(study)
    if last is not None and now - last < WARM_AGAIN_S:
        return
    _warmed[study] = now
    _warmed.move_to_end(study)
    while len(_warmed) > _WARMED_MAX:
        _warmed.popitem(last=False)
    gw.index.stats["series_warmups"] += 1

    async def warm() -> None:
        try:
            for se in (await gw.index.series_of_study(study))[:at_most]:
                await gw.index.series_entry(study, se["series_uid"])
        except Exception:  # best effort: the metadata request will load (and report) it anyway
            return

    task = asyncio.create_task(warm(), name=f"warm-series-{study}")
    _warming.add(task)
    task.add_done_callback(_warming.discard)


@router.get("/studies/{study}/instances", summary="Search for instances of a study.")
async def search_study_instances(study: str, request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    return await _search(request, gw, principal, "INSTANCE", {"StudyInstanceUID": uid(study, "StudyInstanceUID")})


@router.get("/studies/{study}/series/{series}/instances", summary="Search for instances of a series.")
async def search_series_instances(
    study: str, series: str, request: Request, gw: GatewayDep, principal: ReadUser
) -> Response:
    fixed = {"StudyInstanceUID": uid(study, "StudyInstanceUID"), "SeriesInstanceUID": uid(series, "SeriesInstanceUID")}
    return await _search(request, gw, principal, "INSTANCE", fixed)
