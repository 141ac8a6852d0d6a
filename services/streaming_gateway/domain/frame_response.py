"""WADO-RS frame responses with bounded work: the frame-list and resolution parsers, the exact size of each part, and
a :class:`Body` laid out before any payload exists, so its length, ``Content-Range`` and a 413 are known up front and
its parts are produced one window at a time while streaming.

``frames/1,1,1,…`` named the same frame a thousand times and built the whole body in memory (18 GB for a large CR).
Now the list is de-duplicated (first occurrence keeps its place), the number of distinct frames and the response
bytes are capped by settings, and a large body is streamed part by part: at most ``window`` payloads exist at once.
Pure: the payloads are produced by callables the route supplies.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from services.streaming_gateway.domain import media
from services.streaming_gateway.domain.errors import BadRequest
from services.streaming_gateway.domain.frames import Frame
from services.streaming_gateway.domain.numbers import is_uint, parse_uint

EOC = b"\xff\xd9"
#: A frame list may repeat entries (they are dropped), but not without end: at most this many entries are read (or
#: ``max_frames`` if larger). uvicorn's h11 already refuses request heads over 16 KiB, so this only bounds the parse
#: wherever the gateway runs behind a server with a longer URL limit.
MAX_ENTRIES = 10_000
#: Resolution levels of any codestream radloop writes (``shared.htj2k.levels_for`` caps decompositions at 32).
MAX_RESOLUTION = 32


def _shown(raw: str) -> str:
    return repr(raw) if len(raw) <= 60 else repr(raw[:60]) + "…"


def parse_frame_list(raw: str, *, max_frames: int) -> list[int]:
    """Frame numbers of a WADO-RS ``{frameList}``: ASCII digits, each ≥ 1, duplicates dropped in first-seen order.

    :class:`BadRequest` (400, with the reason) for a number that is not 1, 2, … in ASCII digits, for more than
    ``max_frames`` distinct frames, or for more than :data:`MAX_ENTRIES` entries.
    """
    most = max(MAX_ENTRIES, max_frames)
    if raw.count(",") >= most:
        raise BadRequest(f"the frame list has more than {most} entries (at most {max_frames} distinct frames are "
                         "served per request)")
    entries = raw.split(",")
    nums: dict[int, None] = {}
    for part in entries:
        p = part.strip(" ")
        if not is_uint(p) or int(p) < 1:
            raise BadRequest(
                f"frame number {_shown(p)} in {_shown(raw)} is not a positive integer written with the digits 0-9; "
                "frames count from 1"
            )
        nums[int(p)] = None
        if len(nums) > max_frames:
            raise BadRequest(
                f"the frame list names more than {max_frames} distinct frames; at most {max_frames} are served per "
                "request (RADLOOP_WADO_MAX_FRAMES): ask for them in several requests"
            )
    return list(nums)


def parse_resolution(raw: str | None) -> int | None:
    """The ``resolution`` query parameter (0 = lowest level), ASCII digits only; :class:`BadRequest` otherwise."""
    if raw is None:
        return None
    p = raw.strip(" ")
    if not is_uint(p):
        raise BadRequest(f"resolution value {_shown(raw)} is not a non-negative integer written with the digits 0-9 "
                         "(0 is the lowest resolution)")
    return parse_uint(p, "resolution", maximum=MAX_RESOLUTION)


# --- part sizes -------------------------------------------------------------------------------------------------------
def encoded_payload(f: Frame, res: int | None) -> tuple[int, int]:
    """(bytes of the codestream to send, bytes of the part): the whole stream, or the prefix of level ``res`` + EOC."""
    if res is None or res >= len(f.offsets) - 1:
        return len(f.data), len(f.data)
    return f.offsets[res], f.offsets[res] + len(EOC)


def encoded_bytes(f: Frame, res: int | None) -> bytes:
    """The codestream or its level-``res`` prefix closed by an EOC marker (a complete, decodable stream)."""
    keep, size = encoded_payload(f, res)
    return f.data if keep == size else f.data[:keep] + EOC


def skip_levels(f: Frame, res: int | None) -> int:
    """Resolution levels to drop when decoding frame ``f`` at level ``res`` (None: full resolution)."""
    return 0 if res is None else max(0, len(f.offsets) - 1 - res)


def decoded_size(codestream: bytes, skip: int) -> int | None:
    """Bytes of the pixels ``shared.htj2k.decode(codestream, skip_levels=skip)`` returns, from the SIZ marker, without
    decoding; None if the stream has no readable SIZ.

    JPEG 2000 reduces a component of ``Xsiz - XOsiz`` columns by ``skip`` levels to ``ceil(Xsiz/2^skip) -
    ceil(XOsiz/2^skip)`` (ITU-T T.800 B.5); samples of ≤ 8 bits decode to 1 byte, ≤ 16 bits to 2, else 4.
    """
    if not codestream.startswith(b"\xff\x4f\xff\x51") or len(codestream) < 4 + 38 + 3:
        return None
    # SIZ after SOC: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz, then Ssiz XRsiz YRsiz per component.
    _, _, x, y, xo, yo, _, _, _, _, comps = struct.unpack(">HHIIIIIIIIH", codestream[4:42])
    if comps < 1 or len(codestream) < 42 + 3 * comps:
        return None
    precision = max((codestream[42 + 3 * k] & 0x7F) + 1 for k in range(comps))
    itemsize = 1 if precision <= 8 else 2 if precision <= 16 else 4
    d = 1 << skip
    width = -(-x // d) - -(-xo // d)
    height = -(-y // d) - -(-yo // d)
    return max(0, width) * max(0, height) * comps * itemsize


#: Bytes the per-frame resolution headers may take. Proxies refuse large response headers: an AWS ALB answers 502 for
#: a header over 16 KB or headers over 32 KB in all (the local entry's nginx allows 64 KB), and a 1,000-frame request
#: makes about 30 KB of offsets. Above this the headers are left out (a client can still ask for ?resolution=k).
RESOLUTION_HEADERS_MAX_BYTES = 8 * 1024


def resolution_headers(offsets: Sequence[Sequence[int]]) -> dict[str, str]:
    """``X-Resolution-Offsets`` (per frame, the byte offsets where each resolution level ends, ``;`` between frames)
    and ``X-Resolution-Levels``, or no headers when they would pass :data:`RESOLUTION_HEADERS_MAX_BYTES`."""
    joined = ";".join(",".join(str(o) for o in frame) for frame in offsets)
    if len(joined) > RESOLUTION_HEADERS_MAX_BYTES:
        return {}
    return {"X-Resolution-Offsets": joined, "X-Resolution-Levels": ";".join(str(len(frame)) for frame in offsets)}


# --- the body ---------------------------------------------------------------------------------------------------------
class PayloadSizeError(RuntimeError):
    """A produced payload differs from its planned size (the body's length was already sent): a bug, never input."""


@dataclass(frozen=True)
class Payload:
    """A part's bytes, produced on demand, of a size known in advance."""

    size: int
    produce: Callable[[], Awaitable[bytes]]


Segment = bytes | Payload


class Body:
    """A response body as a list of segments: literal bytes (part headers, boundaries) and :class:`Payload` s."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = list(segments)
        self.length = sum(s.size if isinstance(s, Payload) else len(s) for s in self.segments)

    @classmethod
    def multipart(cls, parts: Sequence[tuple[str, Payload]], boundary: str,
                  locations: Sequence[str] | None = None) -> Body:
        """A multipart/related body, byte-identical to :func:`media.multipart_body` of the produced parts; with
        ``locations``, each part names its resource in a ``Content-Location`` header."""
        segs: list[Segment] = []
        for k, (ctype, payload) in enumerate(parts):
            segs += [media.part_header(boundary, ctype, locations[k] if locations else None), payload, b"\r\n"]
        segs.append(f"--{boundary}--\r\n".encode())
        return cls(segs)

    @classmethod
    def single(cls, payload: Payload) -> Body:
        """A single-part body: just the payload."""
        return cls([payload])

    async def read(self, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start..end`` (inclusive) at once, producing the payloads concurrently (for small bodies)."""
        return b"".join([c async for c in self.stream(start, end, window=len(self.segments))])

    async def stream(self, start: int = 0, end: int | None = None, *, window: int = 2) -> AsyncIterator[bytes]:
        """Yield bytes ``start..end`` (inclusive; default the whole body) in order.

        Only payloads that overlap the range are produced, at most ``window`` of them at a time (the next ones are
        produced while the current one is being sent); each is dropped once yielded, so memory stays bounded by
        ``window`` parts whatever the body's length.
        """
        last = self.length - 1 if end is None else min(end, self.length - 1)
        chosen: list[tuple[int, Segment]] = []
        pos = 0
        for seg in self.segments:
            size = seg.size if isinstance(seg, Payload) else len(seg)
            if pos > last:
                break
            if pos + size > start and size:
                chosen.append((pos, seg))
            pos += size
        todo = [k for k, (_, seg) in enumerate(chosen) if isinstance(seg, Payload)]
        tasks: dict[int, asyncio.Task[bytes]] = {}
        nxt = 0

        def fill() -> None:
            nonlocal nxt
            while nxt < len(todo) and len(tasks) < max(1, window):
                k = todo[nxt]
                p = chosen[k][1]
                assert isinstance(p, Payload)
                tasks[k] = asyncio.ensure_future(p.produce())
                nxt += 1

        try:
            for k, (at, seg) in enumerate(chosen):
                if isinstance(seg, Payload):
                    fill()
                    data = await tasks.pop(k)
                    if len(data) != seg.size:
                        raise PayloadSizeError(f"a part was planned as {seg.size} bytes but is {len(data)}")
                    fill()
                else:
                    data = seg
                lo, hi = max(0, start - at), min(len(data), last - at + 1)
                yield data if (lo, hi) == (0, len(data)) else data[lo:hi]
                del data
        finally:
            for t in tasks.values():
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks.values(), return_exceptions=True)
