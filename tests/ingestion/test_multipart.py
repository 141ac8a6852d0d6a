"""The incremental multipart/related reader: parts survive any chunking; framing errors and caps are reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.ingestion.api.multipart import BodyTooLargeError, MultipartError, iter_parts, parse_media_type

BOUNDARY = "b0undary"


def body(parts: list[bytes]) -> bytes:
    out = b"preamble to ignore\r\n"
    for p in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{BOUNDARY}--\r\nepilogue".encode()


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def collect(data: bytes, size: int, **kw: int) -> list[bytes]:
    async def run() -> list[bytes]:
        return [p.body async for p in iter_parts(chunked(data, size), BOUNDARY, max_body=kw.get("max_body", 1 << 20),
                                                  max_part=kw.get("max_part", 1 << 20))]

    return asyncio.run(run())


def test_any_chunking_gives_the_same_parts() -> None:
    parts = [b"first\r\n--b0und", b"", b"\r\n\r\nthird with --b0undar inside" * 7]
    data = body(parts)
    for size in (1, 2, 3, 5, 7, 13, 64, len(data)):
        assert collect(data, size) == parts, size


def test_framing_errors_and_caps() -> None:
    with pytest.raises(MultipartError, match="closing"):
        collect(body([b"x"])[:-30], 8)
    with pytest.raises(MultipartError, match="no multipart boundary"):
        collect(b"just some bytes", 4)
    with pytest.raises(BodyTooLargeError):
        collect(body([b"x" * 5000]), 100, max_body=4000)
    with pytest.raises(BodyTooLargeError):
        collect(body([b"x" * 50000]), 1000, max_part=1000)


def test_media_type_parameters() -> None:
    assert parse_media_type('multipart/related; type="application/dicom"; boundary="a;b"') == (
        "multipart/related", {"type": "application/dicom", "boundary": "a;b"})
    assert parse_media_type("Multipart/Related;type=application/dicom")[1]["type"] == "application/dicom"
