"""An incremental ``multipart/related`` reader for STOW-RS request bodies.

Parts are yielded as soon as their closing boundary has arrived, so instances are processed while the rest of the
body is still streaming in. The total body and each part are bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related body."""


class BodyTooLargeError(Exception):
    """The body exceeds the configured cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body exceeds {limit} bytes")
        self.limit = limit


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; k=v; k="v"`` -> (lower-cased type, params with lower-cased keys and unquoted values)."""
    parts = _split_params(value)
    mtype = parts[0].strip().lower() if parts else ""
    params: dict[str, str] = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            params[k.strip().lower()] = v
    return mtype, params


def _split_params(value: str) -> list[str]:
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line.strip():
            continue
        if b":" not in line:
            raise MultipartError(f"part header line {line[:60]!r} has no ':'")
        k, v = line.split(b":", 1)
        out[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
    return out


async def iter_parts(chunks: AsyncIterator[bytes], boundary: str, *, max_body: int,
                     max_part: int) -> AsyncIterator[Part]:
    """Yield the parts of a multipart body read from ``chunks``.

    Raises :class:`BodyTooLargeError` past ``max_body`` bytes (or a part past ``max_part``), and
    :class:`MultipartError` when the framing is wrong (no opening boundary, a part without a closing boundary).
    """
    if not boundary or len(boundary) > 200:
        raise MultipartError("the multipart boundary parameter is missing or longer than 200 characters")
    delim = b"--" + boundary.encode("latin-1")
    sep = b"\r\n" + delim
    buf = bytearray()
    total = 0
    started = False
    finished = False
    scan_from = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_body:
            raise BodyTooLargeError(max_body)
        if finished:
            continue  # epilogue: ignored, but still counted against the cap
        buf += chunk
        if not started:
            i = buf.find(delim)
            if i < 0:
                if len(buf) > 4096:
                    raise MultipartError("no opening multipart boundary in the first 4096 bytes")
                continue
            # the preamble before the first boundary is ignored
            del buf[: i + len(delim)]
            started = True
            scan_from = 0
        while started and not finished:
            if len(buf) < 2:
                break
            if buf[:2] == b"--":
                finished = True
                break
            end = buf.find(sep, scan_from)
            if end < 0:
                if len(buf) > max_part + 8192:
                    raise BodyTooLargeError(max_part)
                scan_from = max(0, len(buf) - len(sep))
                break
            if end > max_part + 8192:
                # The closing boundary came in the same chunk that took the part past its cap: the part is still
                # too large (8 KiB allow for its headers, as above), whatever the chunking.
                raise BodyTooLargeError(max_part)
            raw = bytes(buf[:end])
            del buf[: end + len(sep)]
            scan_from = 0
            yield _part(raw)
    if not started:
        raise MultipartError("the body holds no multipart boundary; expected a multipart/related body")
    if not finished:
        raise MultipartError("the body ends before the closing multipart boundary")


def _part(raw: bytes) -> Part:
    # raw: b"\r\nheaders\r\n\r\nbody" (the CRLF after the boundary line comes first; transport padding is allowed)
    nl = raw.find(b"\r\n")
    if nl < 0:
        raise MultipartError("a part has no header section")
    raw = raw[nl + 2 :]
    if raw.startswith(b"\r\n"):
        return Part({}, raw[2:])
    hend = raw.find(b"\r\n\r\n")
    if hend < 0:
        raise MultipartError("a part's headers are not followed by an empty line")
    return Part(_headers(raw[:hend]), raw[hend + 4 :])
