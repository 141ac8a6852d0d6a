"""WADO-RS routes (PS3.18 §10.4): instances, metadata, frames (progressive), rendered images and thumbnails."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from services.streaming_gateway.adapters.index import SeriesEntry
from services.streaming_gateway.api.deps import (
    DICOM_JSON,
    GatewayDep,
    accept_of,
    audit,
    audit_image_read,
    uid,
)
from services.streaming_gateway.domain import frame_response as fr
from services.streaming_gateway.domain import media, render
from services.streaming_gateway.domain.errors import BadRequest, NotAcceptable, NotFound, TooLarge
from services.streaming_gateway.domain.frames import Decoded, Frame
from services.streaming_gateway.domain.transcode import transcode
from services.streaming_gateway.service import Gateway
from shared.auth import Principal, ReadUser
from shared.htj2k import decode

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb/studies", tags=["WADO-RS"])
_EXPOSE = (
    "ETag, Content-Range, Accept-Ranges, X-Resolution-Offsets, X-Resolution-Levels, X-Cache, Server-Timing, Warning, "
    "X-Series-Frames, X-Max-Frames"
)


def _ids(study: str, series: str | None = None, sop: str | None = None) -> tuple[str, ...]:
    out = [uid(study, "StudyInstanceUID")]
    if series is not None:
        out.append(uid(series, "SeriesInstanceUID"))
    if sop is not None:
        out.append(uid(sop, "SOPInstanceUID"))
    return tuple(out)


def _etag_matches(request: Request, etag: str) -> bool:
    inm = request.headers.get("if-none-match")
    if not inm:
        return False
    tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
    return "*" in tags or etag in tags


# --- instances ---------------------------------------------------------------------------------------------------
async def _instance_items(gw: Gateway, study: str, series: str | None, sop: str | None) -> list[dict[str, Any]]:
    if sop is not None:
        assert series is not None
        return [await gw.index.instance(study, series, sop)]
    items = await gw.index.instances_of_study(study, series)
    if not items:
        what = f"series {series} of study {study}" if series else f"study {study}"
        raise NotFound(f"{what} has no stored instances")
    return items


async def _instance_part(gw: Gateway, it: dict[str, Any], ts: str) -> tuple[str, bytes]:
    study, series, sop = it["study_uid"], it["series_uid"], it["sop_uid"]
    try:
        original = await gw.frames.read_original(study, series, sop)
    except NotFound:
        raise NotFound(f"instance {sop} is indexed but its stored object is missing") from None
    stored_ts = it.get("transfer_syntax_uid") or ""
    if ts == "*" or ts == stored_ts:
        return f"application/dicom; transfer-syntax={stored_ts}" if stored_ts else "application/dicom", original
    n = int(it.get("number_of_frames") or 1)
    frames = await asyncio.gather(*(gw.frames.frame(study, series, sop, k) for k in range(1, n + 1)))
    try:
        data = await gw.run_cpu(transcode, original, [f.data for f, _ in frames], ts)
    except Exception:
        log.warning("transcoding failed", extra={"target": ts})
        raise NotAcceptable(f"instance {sop} cannot be transcoded from {stored_ts} to {ts}") from None
    return f"application/dicom; transfer-syntax={ts}", data


async def _retrieve(
    request: Request, gw: Gateway, principal: Principal, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    ts = media.negotiate_instances(accept_of(request))
    items = await _instance_items(gw, study, series, sop)
    await audit(request, principal, "wado.retrieve",
                {"study_uid": study, "series_uid": series, "sop_uid": sop, "transfer_syntax": ts}, count=len(items))
    boundary = media.boundary_for(f"{study}/{series}/{sop}/{ts}/{len(items)}")
    # The first part is read before the response starts, so a missing object or a failed transcode is a proper
    # status. Later parts stream with a bounded read-ahead window.
    window = max(1, gw.settings.retrieve_concurrency)
    first = await _instance_part(gw, items[0], ts)

    async def body() -> AsyncIterator[bytes]:
        yield media.part_header(boundary, first[0]) + first[1] + b"\r\n"
        pending: list[asyncio.Task[tuple[str, bytes]]] = []
        rest = iter(items[1:])
        try:
            for it in rest:
                pending.append(asyncio.create_task(_instance_part(gw, it, ts)))
                if len(pending) >= window:
                    break
            while pending:
                ctype, data = await pending.pop(0)
                nxt = next(rest, None)
                if nxt is not None:
                    pending.append(asyncio.create_task(_instance_part(gw, nxt, ts)))
                yield media.part_header(boundary, ctype) + data + b"\r\n"
            yield f"--{boundary}--\r\n".encode()
        finally:
            for t in pending:
                t.cancel()

    inner_ts = None if ts == "*" else ts
    return StreamingResponse(
        body(), media_type=media.multipart_content_type(boundary, "application/dicom", inner_ts)
    )


@router.get("/{study}", summary="Retrieve a study (multipart/related; type=application/dicom).")
async def retrieve_study(study: str, request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    (s,) = _ids(study)
    return await _retrieve(request, gw, principal, s)


@router.get("/{study}/series/{series}", summary="Retrieve a series.")
async def retrieve_series(study: str, series: str, request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    s, se = _ids(study, series)
    return await _retrieve(request, gw, principal, s, se)


@router.get("/{study}/series/{series}/instances/{sop}", summary="Retrieve an instance.")
async def retrieve_instance(
    study: str, series: str, sop: str, request: Request, gw: GatewayDep, principal: ReadUser
) -> Response:
    s, se, i = _ids(study, series, sop)
    return await _retrieve(request, gw, principal, s, se, i)


# --- metadata ----------------------------------------------------------------------------------------------------
def _series_json(entry: SeriesEntry) -> bytes:
    if entry.metadata_json is None:
        entry.metadata_json = b",".join(it["dicom_json"].encode() for it in entry.instances if it.get("dicom_json"))
    return entry.metadata_json


async def _metadata_response(
    request: Request, gw: Gateway, body_parts: list[bytes], etag_seed: str, cached_gzip: SeriesEntry | None
) -> Response:
    etag = '"m-' + hashlib.blake2b(etag_seed.encode(), digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    body = b"[" + b",".join(p for p in body_parts if p) + b"]"
    if "gzip" in request.headers.get("accept-encoding", "") and len(body) > 4096:
        # Compression is CPU work (tens of ms for a large series): worker threads, and once per series version.
        if cached_gzip is not None:
            if cached_gzip.metadata_gzip is None:
                cached_gzip.metadata_gzip = await gw.run_cpu(gzip.compress, body, 5)
            body = cached_gzip.metadata_gzip
        else:
            body = await gw.run_cpu(gzip.compress, body, 5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=DICOM_JSON, headers=headers)


def _check_json_accept(request: Request) -> None:
    for r in media.parse_accept(accept_of(request)):
        if r.type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable(f"metadata is served as {DICOM_JSON}, which the Accept header does not allow")


@router.get("/{study}/metadata", summary="Metadata of every instance of a study (DICOM JSON).")
async def study_metadata(study: str, request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    (s,) = _ids(study)
    _check_json_accept(request)
    series = await gw.index.series_of_study(s)
    if not series:
        raise NotFound(f"study {s} does not exist")
    entries = await asyncio.gather(*(gw.index.series_entry(s, se["series_uid"]) for se in series))
    count = sum(len(e.instances) for e in entries)
    await audit(request, principal, "wado.metadata", {"study_uid": s}, count=count)
    seed = "|".join(f"{e.series['series_uid']}:{e.validator}" for e in entries)
    return await _metadata_response(request, gw, [_series_json(e) for e in entries], seed, None)


@router.get("/{study}/series/{series}/metadata", summary="Metadata of every instance of a series (DICOM JSON).")
async def series_metadata(study: str, series: str, request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    s, se = _ids(study, series)
    _check_json_accept(request)
    entry = await gw.index.series_entry(s, se)
    await audit(request, principal, "wado.metadata", {"study_uid": s, "series_uid": se}, count=len(entry.instances))
    return await _metadata_response(request, gw, [_series_json(entry)], f"{s}/{se}:{entry.validator}", entry)


@router.get("/{study}/series/{series}/instances/{sop}/metadata", summary="Metadata of an instance (DICOM JSON).")
async def instance_metadata(
    study: str, series: str, sop: str, request: Request, gw: GatewayDep, principal: ReadUser
) -> Response:
    s, se, i = _ids(study, series, sop)
    _check_json_accept(request)
    it = await gw.index.instance(s, se, i)
    await audit(request, principal, "wado.metadata", {"study_uid": s, "series_uid": se, "sop_uid": i})
    seed = f"{s}/{se}/{i}:{it.get('content_sha256')}"
    return await _metadata_response(request, gw, [it.get("dicom_json", "{}").encode()], seed, None)


# --- frames ------------------------------------------------------------------------------------------------------
def _decoded(f: Frame, skip: int) -> Decoded:
    return Decoded.of_array(decode(f.data, skip_levels=skip), f.digest)


def _decoded_hit(gw: Gateway, f: Frame, skip: int) -> Decoded | None:
    """The decoded pixels of ``f`` at ``skip``, if a frame request or a rendering decoded them before."""
    hit = gw.decoded.get(f"{f.digest}/{skip}")
    return hit if isinstance(hit, Decoded) and hit.digest == f.digest else None


async def _decoded_cached(gw: Gateway, f: Frame, skip: int) -> bytes:
    hit = _decoded_hit(gw, f, skip)
    if hit is not None:
        return hit.data
    d = await gw.run_cpu(_decoded, f, skip)
    gw.decoded.put(f"{f.digest}/{skip}", d)
    return d.data


def _maybe_prefetch(gw: Gateway, study: str, series: str) -> None:
    if gw.settings.prefetch_enabled and gw.frames.should_prefetch(study, series):

        async def instances() -> list[dict[str, Any]]:
            return await gw.index.instances_of_study(study, series)

        gw.frames.start_prefetch(study, series, instances)


#: One frame: (study, series, instance) and its 1-based number.
_FrameKey = tuple[tuple[str, str, str], int]


@dataclass
class _Planned:
    """One requested frame after the planning pass: what the headers need, and the frame while it is small."""

    ids: tuple[str, str, str]
    number: int
    digest: str
    offsets: tuple[int, ...]
    size: int  # bytes of its part's payload
    skip: int  # resolution levels dropped when decoding
    cached: bool
    frame: Frame | None  # kept only within the buffer budget; re-read (from the cache) when streaming


async def _plan_frames(gw: Gateway, keys: list[_FrameKey], res: int | None, encoded: bool) -> list[_Planned]:
    """Read each frame once, in order with a bounded window, to learn its digest, resolution offsets and exact part
    size; stop with 413 as soon as the parts pass ``wado_max_response_bytes``. At most ``wado_buffer_bytes`` of
    frames stay referenced (the rest live in the byte-bounded frame cache, or are read again while streaming)."""
    s = gw.settings
    window = max(1, s.retrieve_concurrency)
    pending: list[asyncio.Task[tuple[Frame, bool]]] = []
    it = iter(keys)
    planned: list[_Planned] = []
    total = held = 0
    try:
        for ids, n in it:
            pending.append(asyncio.create_task(gw.frames.frame(*ids, n)))
            if len(pending) >= window:
                break
        for ids, n in keys:
            f, hit = await pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(asyncio.create_task(gw.frames.frame(*nxt[0], nxt[1])))
            if res is not None and res >= len(f.offsets):
                raise BadRequest(f"resolution {res} does not exist for frame {n}; levels 0 to {len(f.offsets) - 1} exist")
            skip = fr.skip_levels(f, res)
            if encoded:
                size = fr.encoded_payload(f, res)[1]
            else:
                known = fr.decoded_size(f.data, skip)
                # No readable SIZ marker (not a stream radloop wrote): decode once to learn the size.
                size = known if known is not None else len(await _decoded_cached(gw, f, skip))
            total += size
            if total > s.wado_max_response_bytes:
                raise TooLarge(
                    f"the {len(keys)} frame(s) asked for come to more than {s.wado_max_response_bytes} bytes "
                    "(RADLOOP_WADO_MAX_RESPONSE_BYTES); ask for fewer frames per request or a lower ?resolution"
                )
            keep = held + len(f.data) <= s.wado_buffer_bytes
            held += len(f.data) if keep else 0
            planned.append(_Planned(ids, n, f.digest, f.offsets, size, skip, hit, f if keep else None))
    finally:
        for t in pending:
            t.cancel()
        if pending:  # read-aheads of a request that failed: collect them (no "exception never retrieved")
            await asyncio.gather(*pending, return_exceptions=True)
    return planned


def _payload(gw: Gateway, p: _Planned, res: int | None, encoded: bool) -> fr.Payload:
    async def produce() -> bytes:
        f = p.frame
        if f is None:
            f, _ = await gw.frames.frame(*p.ids, p.number)
            if f.digest != p.digest:  # frames are immutable; a different stream would break the announced length
                raise fr.PayloadSizeError(f"frame {p.number} changed while it was being sent")
        return fr.encoded_bytes(f, res) if encoded else await _decoded_cached(gw, f, p.skip)

    return fr.Payload(p.size, produce)


@router.get("/{study}/series/{series}/instances/{sop}/frames/{frame_list}", summary="Retrieve frames.")
async def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frame_list: str,
    request: Request,
    gw: GatewayDep,
    principal: ReadUser,
    resolution: str | None = None,
) -> Response:
    t0 = time.perf_counter()
    s, se, i = _ids(study, series, sop)
    ids = (s, se, i)
    nums = fr.parse_frame_list(frame_list, max_frames=gw.settings.wado_max_frames)
    res = fr.parse_resolution(resolution)
    rep = media.negotiate_frames(accept_of(request), len(nums))
    plan = await _plan_frames(gw, [(ids, n) for n in nums], res, rep.encoded)
    return await _frames_response(request, gw, principal, plan, rep, res, t0)


@router.get("/{study}/series/{series}/pixeldata", summary="Retrieve the pixel data of every frame of a series.")
async def series_pixel_data(
    study: str, series: str, request: Request, gw: GatewayDep, principal: ReadUser, resolution: str | None = None,
    offset: str | None = None, limit: str | None = None,
) -> Response:
    """The Series Pixel Data resource (PS3.18 §10.4.1.1.6): every frame of every instance in one multipart response,
    in instance order, each part with its frame's URL as ``Content-Location``. ``?resolution=k`` (radloop's, as on
    frames) sends each frame's level-k prefix: a viewer gets a whole series at low resolution in one request.
    ``?offset=i&limit=n`` (radloop's, named as QIDO's) sends frames i to i+n-1 of that order only, so a series over
    the limits comes in several requests; every answer says how many frames the series has (``X-Series-Frames``).
    Bounded as a frames request is: at most ``wado_max_frames`` frames and ``wado_max_response_bytes`` bytes (413 with
    the reason and, in ``X-Max-Frames``, the frame limit otherwise)."""
    t0 = time.perf_counter()
    s, se = _ids(study, series)
    res = fr.parse_resolution(resolution)
    first = _count_param(offset, "offset", 0)
    wanted = _count_param(limit, "limit", 1)
    rep = media.negotiate_frames(accept_of(request), 2)  # a pixel data resource is always multipart
    # The series' instance list as the metadata request (which a viewer makes first) left it in the series cache.
    entry = await gw.index.series_entry(s, se)
    if not entry.instances:
        raise NotFound(f"series {se} of study {s} has no stored instances")
    keys = [((s, se, it["sop_uid"]), n) for it in entry.instances
            for n in range(1, int(it.get("number_of_frames") or 1) + 1)]
    total = len(keys)
    if first is not None and first >= total:
        raise NotFound(f"series {se} has {total} frames; offset {first} is past the last one")
    keys = keys[first or 0:][:wanted] if wanted is not None else keys[first or 0:]
    most = gw.settings.wado_max_frames
    if len(keys) > most:
        raise TooLarge(f"series {se} has {total} frames; {len(keys)} asked for, more than {most} "
                       "(RADLOOP_WADO_MAX_FRAMES): ask for them in parts with ?offset= and ?limit=",
                       headers={"X-Max-Frames": str(most), "X-Series-Frames": str(total)})
    plan = await _plan_frames(gw, keys, res, rep.encoded)
    base = request.url.path.removesuffix("/pixeldata")
    response = await _frames_response(request, gw, principal, plan, rep, res, t0,
                                      locations=[f"{base}/instances/{p.ids[2]}/frames/{p.number}" for p in plan])
    response.headers["X-Series-Frames"] = str(total)
    return response


def _count_param(value: str | None, name: str, least: int) -> int | None:
    """A non-negative whole-number query parameter (``offset`` >= 0, ``limit`` >= 1), or None when absent."""
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 9 or int(value) < least:
        raise BadRequest(f"{name} must be a whole number from {least} to 999999999, not {value[:40]!r}")
    return int(value)


async def _frames_response(
    request: Request,
    gw: Gateway,
    principal: Principal,
    plan: list[_Planned],
    rep: media.FrameRepresentation,
    res: int | None,
    t0: float,
    locations: list[str] | None = None,
) -> Response:
    """The response to a frames or pixel data request: conditional (ETag), ranged, in memory when small and streamed
    part by part when large, with the resolution offsets of each frame in ``X-Resolution-Offsets`` (within
    ``fr.RESOLUTION_HEADERS_MAX_BYTES``)."""
    t_read = time.perf_counter()
    s, se, _ = plan[0].ids
    # After the requested frames, so the first image does not wait behind its own series' prefetch.
    _maybe_prefetch(gw, s, se)
    variant = f"{rep.variant}|{res}"
    etag = '"' + hashlib.blake2b((variant + "".join(p.digest for p in plan)).encode(), digest_size=16).hexdigest() + '"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={gw.settings.frame_max_age_s}, immutable",
        "Vary": "Accept",
        "Accept-Ranges": "bytes",
        **fr.resolution_headers([p.offsets for p in plan]),
        "X-Cache": "hit" if all(p.cached for p in plan) else "miss",
        "Access-Control-Expose-Headers": _EXPOSE,
    }
    timing = f"read;dur={(t_read - t0) * 1000:.1f}"
    await audit_image_read(gw, principal, s, se, len(plan), "wado.frames")
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)

    payloads = [_payload(gw, p, res, rep.encoded) for p in plan]
    if rep.multipart:
        boundary = media.boundary_for(etag)
        body = fr.Body.multipart([(rep.part_type, p) for p in payloads], boundary, locations)
        ctype = media.multipart_content_type(boundary, rep.media_type)
    else:
        body = fr.Body.single(payloads[0])
        ctype = rep.media_type
    if body.length > gw.settings.wado_max_response_bytes:  # the parts fit, the multipart framing does not
        raise TooLarge(f"the response would be {body.length} bytes, more than {gw.settings.wado_max_response_bytes} "
                       "(RADLOOP_WADO_MAX_RESPONSE_BYTES); ask for fewer frames per request")
    a, b = 0, body.length - 1
    status = 200
    if_range = request.headers.get("if-range")
    if if_range is None or if_range.strip() == etag:
        rng = media.parse_range(request.headers.get("range"), body.length)
        if rng is not None:
            a, b = rng
            status = 206
            headers["Content-Range"] = f"bytes {a}-{b}/{body.length}"
    if b - a + 1 <= gw.settings.wado_buffer_bytes:
        data = await body.read(a, b)
        headers["Server-Timing"] = f"{timing}, total;dur={(time.perf_counter() - t0) * 1000:.1f}"
        return Response(data, status_code=status, media_type=ctype, headers=headers)
    # Large: stream part by part (a bounded window of payloads in memory), with the exact length announced.
    headers["Server-Timing"] = timing
    headers["Content-Length"] = str(b - a + 1)
    window = max(1, gw.settings.retrieve_concurrency)
    return StreamingResponse(body.stream(a, b, window=window), status_code=status, media_type=ctype, headers=headers)


# --- rendered and thumbnails -------------------------------------------------------------------------------------
async def _render(
    request: Request,
    gw: Gateway,
    principal: Principal,
    study: str,
    series: str,
    sop: str,
    frame_no: int,
    *,
    thumbnail: bool,
) -> Response:
    qp = request.query_params
    params = render.parse_render_params(
        accept_of(request), qp.get("window"), qp.get("viewport"), qp.get("quality")
    )
    if thumbnail and params.viewport is None:
        params = render.RenderParams(params.media_type, params.window, None, params.quality, params.region)
    it = await gw.index.instance(study, series, sop)
    n = int(it.get("number_of_frames") or 1)
    if frame_no > n:
        raise NotFound(f"frame {frame_no} of instance {sop} does not exist; it has {n} frame(s)")
    f, _ = await gw.frames.frame(study, series, sop, frame_no)
    levels = max(0, len(f.offsets) - 1)
    if thumbnail:
        skip = levels  # the lowest resolution: a few hundred bytes of the codestream decode to <= 64 px
    else:
        skip = render.skip_for_viewport(int(it.get("rows") or 0), int(it.get("columns") or 0), levels, params.viewport,
                                        params.region)
    # Audited like frames: one record per (user, series) per window with a count (a study browser reads dozens).
    await audit_image_read(gw, principal, study, series, 1, "wado.thumbnail" if thumbnail else "wado.rendered")
    # The render depends on the pixels, the request and the header (rescale, VOI window, photometric): all in the key,
    # so a corrected header or another instance with the same pixels never gets this one's image.
    header = hashlib.blake2b(f"{it.get('dicom_json')}|{it.get('photometric')}".encode(), digest_size=8).hexdigest()
    etag = '"r-' + hashlib.blake2b(f"{f.digest}|{header}|{params}|{skip}".encode(), digest_size=12).hexdigest() + '"'
    # The media type follows Accept (JPEG or PNG): caches must key on it (a browser handed a cached JPEG to a later
    # PNG request; found by a review, session 22).
    headers = {"ETag": etag, "Cache-Control": f"private, max-age={gw.settings.frame_max_age_s}", "Vary": "Accept"}
    if _etag_matches(request, etag):  # the client has these bytes: nothing to render
        return Response(status_code=304, headers=headers)
    hit = gw.rendered.get(etag)
    if hit is not None:
        headers["X-Cache"] = "hit"
        return Response(hit.data, media_type=params.media_type, headers=headers)
    # One decode per frame and resolution: pixels decoded for an application/octet-stream request, or for another
    # rendering of the same frame (another window or quality), are windowed again without decoding the codestream.
    cached = _decoded_hit(gw, f, skip)

    def work() -> tuple[bytes, Decoded | None]:
        pixels = cached.array() if cached is not None else decode(f.data, skip_levels=skip)
        out = render.render(f.data, it.get("dicom_json"), it.get("photometric"), params, skip_levels=skip,
                            pixels=pixels)
        return out, (None if cached is not None else Decoded.of_array(pixels, f.digest))

    data, decoded = await gw.run_cpu(work)
    if decoded is not None:
        gw.decoded.put(f"{f.digest}/{skip}", decoded)
    gw.rendered.put(etag, Frame(data, f.digest, (), 0))
    headers["X-Cache"] = "miss"
    return Response(data, media_type=params.media_type, headers=headers)


_RENDER_LIST_MAX = 100  # parsed (so the reason can say how many), but only one is rendered


def _single_frame(frame_list: str) -> int:
    nums = fr.parse_frame_list(frame_list, max_frames=_RENDER_LIST_MAX)
    if len(nums) != 1:
        raise BadRequest(f"rendered frames are served one at a time; {frame_list!r} names {len(nums)} frames")
    return nums[0]


@router.get("/{study}/series/{series}/instances/{sop}/rendered", summary="Rendered instance (first frame).")
async def rendered_instance(
    study: str, series: str, sop: str, request: Request, gw: GatewayDep, principal: ReadUser
) -> Response:
    s, se, i = _ids(study, series, sop)
    return await _render(request, gw, principal, s, se, i, 1, thumbnail=False)


@router.get("/{study}/series/{series}/instances/{sop}/frames/{frame_list}/rendered", summary="Rendered frame.")
async def rendered_frame(
    study: str, series: str, sop: str, frame_list: str, request: Request, gw: GatewayDep, principal: ReadUser
) -> Response:
    s, se, i = _ids(study, series, sop)
    return await _render(request, gw, principal, s, se, i, _single_frame(frame_list), thumbnail=False)


@router.get("/{study}/series/{series}/instances/{sop}/thumbnail", summary="Instance thumbnail.")
async def thumbnail_instance(
    study: str, series: str, sop: str, request: Request, gw: GatewayDep, principal: ReadUser
) -> Response:
    s, se, i = _ids(study, series, sop)
    return await _render(request, gw, principal, s, se, i, 1, thumbnail=True)


@router.get("/{study}/series/{series}/instances/{sop}/frames/{frame_list}/thumbnail", summary="Frame thumbnail.")
async def thumbnail_frame(
    study: str, series: str, sop: str, frame_list: str, request: Request, gw: GatewayDep, principal: ReadUser
) -> Response:
    s, se, i = _ids(study, series, sop)
    return await _render(request, gw, principal, s, se, i, _single_frame(frame_list), thumbnail=True)


async def _representative(gw: Gateway, study: str, series: str) -> dict[str, Any]:
    items = await gw.index.instances_of_study(study, series)
    if not items:
        raise NotFound(f"series {series} of study {study} has no stored instances")
    return items[len(items) // 2]  # the middle image shows the anatomy best


@router.get("/{study}/series/{series}/thumbnail", summary="Series thumbnail (its middle instance).")
async def thumbnail_series(study: str, series: str, request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    s, se = _ids(study, series)
    it = await _representative(gw, s, se)
    return await _render(request, gw, principal, s, se, it["sop_uid"], 1, thumbnail=True)


@router.get("/{study}/thumbnail", summary="Study thumbnail (first series, middle instance).")
async def thumbnail_study(study: str, request: Request, gw: GatewayDep, principal: ReadUser) -> Response:
    (s,) = _ids(study)
    series = await gw.index.series_of_study(s)
    if not series:
        raise NotFound(f"study {s} does not exist")
    it = await _representative(gw, s, series[0]["series_uid"])
    return await _render(request, gw, principal, s, series[0]["series_uid"], it["sop_uid"], 1, thumbnail=True)
