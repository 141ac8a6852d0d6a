"""Accept-header negotiation (PS3.18 §8.7) and multipart/related bodies.

Parsing is tolerant: ``type`` and ``transfer-syntax`` may be quoted or not (Cornerstone3D sends
``multipart/related; type=application/octet-stream; transfer-syntax=*`` unquoted), and q-values order the choices.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from services.streaming_gateway.domain.errors import BadRequest, NotAcceptable, RangeNotSatisfiable
from services.streaming_gateway.domain.numbers import MAX_DIGITS, is_uint
from shared.htj2k import HTJ2K, HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header, with its parameters and q-value."""
    type: str
    params: dict[str, str]
    q: float

    @property
    def multipart_type(self) -> str | None:
        """The ``type`` parameter of a multipart/related range."""
        return self.params.get("type") if self.type == "multipart/related" else None

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter, if any."""
        return self.params.get("transfer-syntax")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges of an Accept header, highest q first (ties keep the client's order)."""
    if not header or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges: list[MediaRange] = []
    refused = 0
    for part in _split_outside_quotes(header, ","):
        if not part.strip():
            continue
        bits = _split_outside_quotes(part, ";")
        mtype = bits[0].strip().lower()
        params: dict[str, str] = {}
        q: float | None = 1.0
        for b in bits[1:]:
            k, _, v = b.partition("=")
            k, v = k.strip().lower(), v.strip().strip('"').strip()
            if k == "q":
                # RFC 9110 §12.4.2 qvalue, ASCII digits only: float() would also take "nan", "inf", "1e9" and "١".
                # PS3.18 §8.7.7: an invalid Accept value is ignored, so this media range is left out (it failed the
                # whole request with 400: found by a review, session 22).
                q = float(v) if _QVALUE.fullmatch(v) is not None else None
            elif k:
                params[k] = v.lower() if k == "type" else v
        if q is None:
            continue
        if q > 0:
            ranges.append(MediaRange(mtype, params, q))
        else:
            refused += 1
    ranges.sort(key=lambda r: -r.q)
    # q=0 is "not acceptable" (RFC 9110 §12.4.2): a header that refuses everything it names accepts nothing (it was
    # served as */*); only a header naming nothing at all accepts anything.
    return ranges or ([] if refused else [MediaRange("*/*", {}, 1.0)])


# --- frames ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameRepresentation:
    """How frames are sent: stored codestream or decoded pixels, multipart or a single part."""

    encoded: bool  # True: the stored HTJ2K codestream; False: decoded little-endian pixels
    multipart: bool
    part_type: str  # e.g. "image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202"
    variant: str  # stable name for ETags

    @property
    def media_type(self) -> str:
        """The part media type without parameters."""
        return self.part_type.split(";")[0]


#: Transfer syntaxes whose label the stored codestream (lossless HTJ2K, RPCL) may carry: each describes it (.203, the
#: general HTJ2K syntax, includes lossless streams); ``*`` or none gets the exact one, .202.
_HTJ2K_TS = {HTJ2K_LOSSLESS_RPCL, HTJ2K_LOSSLESS, HTJ2K, "*"}
_HTJ2K_TYPES = {"image/jphc", "image/jhc"}
SUPPORTED_FRAME_TYPES = (
    'multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202 (also .201, * and image/jhc), '
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1 (or *), '
    "image/jphc, or application/octet-stream for a single frame"
)


def _jphc(mtype: str, multipart: bool, ts: str | None = None) -> FrameRepresentation:
    # Labelled with the syntax the client named (it was always .202, a syntax a client asking for .201 did not list).
    label = ts if ts in (HTJ2K_LOSSLESS, HTJ2K) else HTJ2K_LOSSLESS_RPCL
    return FrameRepresentation(True, multipart, f"{mtype}; transfer-syntax={label}", f"{mtype}|{multipart}|{label}")


def _octet(multipart: bool) -> FrameRepresentation:
    return FrameRepresentation(
        False, multipart, f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LE}", f"octet|{multipart}"
    )


def negotiate_frames(header: str | None, n_frames: int) -> FrameRepresentation:
    """Pick the frame representation for an Accept header, or raise :class:`NotAcceptable` with the reason."""
    for r in parse_accept(header):
        ts = r.transfer_syntax
        if r.type == "multipart/related":
            inner = r.multipart_type or "application/octet-stream"
            if inner in _HTJ2K_TYPES and (ts is None or ts in _HTJ2K_TS):
                return _jphc(inner, True, ts)
            if inner == "application/octet-stream" and (ts is None or ts in (EXPLICIT_VR_LE, "*")):
                # Cornerstone3D always asks this way (unquoted, transfer-syntax=*); it gets decoded pixels, labelled
                # Explicit VR Little Endian on each part. Viewers that want the codestream ask for image/jphc.
                return _octet(True)
            if inner in ("*/*", "image/*") and (ts is None or ts == "*"):
                return _jphc("image/jphc", True) if inner == "image/*" else _octet(True)
            continue
        if r.type in _HTJ2K_TYPES and (ts is None or ts in _HTJ2K_TS):
            if n_frames == 1:
                return _jphc(r.type, False, ts)
            continue
        if r.type == "application/octet-stream" and (ts is None or ts in (EXPLICIT_VR_LE, "*")):
            if n_frames == 1:
                return _octet(False)
            continue
        if r.type in ("*/*", "multipart/*"):
            return _octet(True)
    raise NotAcceptable(
        f"none of the accepted media types ({header!r}) can be served for {n_frames} frame(s); "
        f"supported: {SUPPORTED_FRAME_TYPES}"
    )


# --- instances ---------------------------------------------------------------------------------------------------
TRANSCODE_TARGETS = (EXPLICIT_VR_LE, IMPLICIT_VR_LE, HTJ2K_LOSSLESS_RPCL, HTJ2K_LOSSLESS)


def negotiate_instances(header: str | None) -> str:
    """The transfer syntax to send instances in: ``*`` (as stored) or one of :data:`TRANSCODE_TARGETS`."""
    for r in parse_accept(header):
        if r.type == "multipart/related":
            inner = r.multipart_type or "application/dicom"
            if inner not in ("application/dicom", "*/*"):
                continue
        elif r.type not in ("application/dicom", "*/*", "multipart/*"):
            continue
        ts = r.transfer_syntax
        if ts is None:
            # PS3.18 §8.7.3.5.2: without a transfer-syntax parameter the default is Explicit VR Little Endian, and
            # §8.7.7: */* (or no Accept) is the default media type, so the default syntax too. It was the stored
            # syntax (JPEG-LS, JPEG 2000 ...), which a client without that codec cannot read (found by a review,
            # session 22). Only transfer-syntax=* asks for the bytes as stored.
            return EXPLICIT_VR_LE
        if ts == "*" or ts in TRANSCODE_TARGETS:
            return ts
    raise NotAcceptable(
        f"none of the accepted media types ({header!r}) can be served; supported: "
        'multipart/related; type="application/dicom" with transfer-syntax * (as stored), '
        + ", ".join(TRANSCODE_TARGETS)
    )


# --- multipart -----------------------------------------------------------------------------------------------------
def boundary_for(seed: str) -> str:
    """A boundary derived from the content's identity, so the same representation is byte-identical each time."""
    return "radloop-" + hashlib.blake2b(seed.encode(), digest_size=12).hexdigest()


def part_header(boundary: str, content_type: str, location: str | None = None) -> bytes:
    """The boundary line and headers that open one part."""
    h = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    if location:
        h += f"Content-Location: {location}\r\n"
    return (h + "\r\n").encode()


def multipart_body(parts: Iterable[tuple[str, bytes]], boundary: str) -> bytes:
    """A complete multipart/related body from (Content-Type, bytes) parts."""
    chunks: list[bytes] = []
    for ctype, data in parts:
        chunks.append(part_header(boundary, ctype))
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def multipart_content_type(boundary: str, inner: str, transfer_syntax: str | None = None) -> str:
    """The Content-Type header of a multipart/related response."""
    ct = f'multipart/related; type="{inner}"; boundary={boundary}'
    if transfer_syntax:
        ct += f"; transfer-syntax={transfer_syntax}"
    return ct


# --- ranges --------------------------------------------------------------------------------------------------------
def _position(raw: str, header: str) -> int:
    if not is_uint(raw):
        if raw.isascii() and raw.isdigit():  # more digits than MAX_DIGITS: past the end of anything served
            return 10**MAX_DIGITS
        raise BadRequest(f"Range header {header[:60]!r} is not bytes=first-last with the digits 0-9")
    return int(raw)


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as (start, end inclusive), None to send everything.

    None for an absent header, another unit or several ranges (RFC 9110 §14.2 lets a server ignore those) and for
    last < first; :class:`BadRequest` for a ``bytes=`` range whose positions are not ASCII digits.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    a, sep, b = spec.strip().partition("-")
    if not sep:
        raise BadRequest(f"Range header {header[:60]!r} is not bytes=first-last, bytes=first- or bytes=-suffix")
    if a == "":
        n = _position(b, header)
        if n <= 0:
            raise RangeNotSatisfiable(f"the suffix range {header[:60]!r} asks for no bytes", length)
        return max(0, length - n), length - 1
    start = _position(a, header)
    end = _position(b, header) if b else length - 1
    if start >= length:
        raise RangeNotSatisfiable(f"range {header[:60]!r} starts past the end of the {length}-byte representation",
                                  length)
    if start > end:
        return None
    return start, min(end, length - 1)
