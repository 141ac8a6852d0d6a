"""The image size an encapsulated frame's own header declares, read before anything decodes it.

A decoder allocates what the codestream's header asks for, not what the DICOM header says: a 473 KB JPEG 2000
frame whose SIZ marker declares 20,000 x 20,000 pixels made a codec worker allocate 2 GB before the mismatch with
Rows x Columns (16 x 16) was noticed after decoding (a decompression bomb, found by a review in session 21). The
safe parse (:mod:`shared.dicom.parse`) therefore reads each frame's header first and refuses a frame whose width,
height or number of components differs from Rows, Columns and SamplesPerPixel:

- JPEG 2000 and HTJ2K (``SOC`` then ``SIZ``, ISO/IEC 15444-1 A.5.1; also inside a JP2 ``jp2c`` box);
- JPEG and JPEG-LS (the ``SOFn`` / ``SOF55`` segment after ``SOI``, ITU-T T.81 B.2.2, T.87 C.2.2).

RLE needs no check: its decoder fills a buffer of Rows x Columns (PS3.5 Annex G).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: Transfer syntaxes whose frames carry a JPEG 2000 codestream (JPEG 2000, its multi-component forms, HTJ2K).
J2K_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
})
#: Transfer syntaxes whose frames carry a JPEG or JPEG-LS stream.
JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
})
#: How far into a frame a header is looked for (JPEG application segments, a JP2 box header).
SEARCH_BYTES = 1 << 20
#: JPEG start-of-frame markers: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC), and JPEG-LS SOF55 (F7).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


@dataclass(frozen=True)
class FrameHeader:
    """What a frame's codestream declares."""

    columns: int
    rows: int
    components: int


class HeaderError(ValueError):
    """The frame has no readable header of its kind; the message says what is wrong."""


def frame_header(frame: bytes, transfer_syntax: str) -> FrameHeader | None:
    """The size ``frame`` declares, or None for a transfer syntax without such a header (native, RLE...)."""
    if transfer_syntax in J2K_SYNTAXES:
        return _j2k(frame)
    if transfer_syntax in JPEG_SYNTAXES:
        return _jpeg(frame)
    return None


def _j2k(frame: bytes) -> FrameHeader:
    start = 0
    if frame[4:8] == b"jP  ":  # a JP2 file (not what PS3.5 asks for, but written by some encoders): its jp2c box
        start = frame.find(b"jp2c", 0, SEARCH_BYTES)
        if start < 0:
            raise HeaderError("a JP2 frame without a codestream box (jp2c)")
        start += 4
    if frame[start:start + 4] != b"\xff\x4f\xff\x51":
        raise HeaderError("the JPEG 2000 codestream does not start with SOC and SIZ markers")
    if len(frame) < start + 42:
        raise HeaderError("the JPEG 2000 SIZ marker segment is truncated")
    xsiz, ysiz, xo, yo = struct.unpack_from(">4I", frame, start + 8)
    (csiz,) = struct.unpack_from(">H", frame, start + 40)
    if xo >= xsiz or yo >= ysiz:
        raise HeaderError(f"the JPEG 2000 image area is empty (SIZ {xsiz} x {ysiz}, offset {xo}, {yo})")
    return FrameHeader(columns=xsiz - xo, rows=ysiz - yo, components=csiz)


def _jpeg(frame: bytes) -> FrameHeader:
    if frame[:2] != b"\xff\xd8":
        raise HeaderError("the JPEG stream does not start with an SOI marker")
    pos, end = 2, min(len(frame), SEARCH_BYTES)
    while pos + 4 <= end:  # each step moves past one marker segment: bounded by the bytes searched
        if frame[pos] != 0xFF:
            raise HeaderError(f"no JPEG marker at byte {pos} before the frame header")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        if marker in _SOF:
            if pos + 10 > len(frame):
                raise HeaderError("the JPEG frame header is truncated")
            rows, cols = struct.unpack_from(">HH", frame, pos + 5)
            if rows == 0:
                raise HeaderError("the JPEG frame header leaves the height to a DNL marker, which is not supported")
            return FrameHeader(columns=cols, rows=rows, components=frame[pos + 9])
        if marker == 0xDA or length < 2:
            break
        pos += 2 + length
    raise HeaderError(f"no JPEG frame header (SOF) in the first {end} bytes")
