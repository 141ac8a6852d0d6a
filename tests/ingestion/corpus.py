"""A generated corpus of malformed DICOM objects (each case: a name and the bytes), built from real files.

Run ``python tests/ingestion/corpus.py OUTDIR`` to write the cases as files (e.g. to try them with storescu).
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def real_file(name: str = "693_UNCR.dcm") -> bytes:
    return Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]


def element_boundaries(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, tag, VR) of every top-level element of an explicit-VR little-endian Part 10 file, meta included."""
    out: list[tuple[int, int, bytes]] = []
    pos = 132
    n = len(data)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            header = 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            header = 8
        out.append((pos, (group << 16) | elem, vr))
        if length == 0xFFFFFFFF:
            break  # undefined length: stop walking (the boundaries found so far are enough)
        pos += header + length
    return out


def _save(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _image(rows: int = 8, cols: int = 8, **kw: object) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "CANARY-PID"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(rows * cols)
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _patch_element_length(data: bytes, tag: int, new_length: int) -> bytes:
    for pos, t, vr in element_boundaries(data):
        if t == tag:
            b = bytearray(data)
            if vr in _LONG_VRS:
                struct.pack_into("<I", b, pos + 8, new_length)
            else:
                struct.pack_into("<H", b, pos + 6, new_length & 0xFFFF)
            return bytes(b)
    raise KeyError(hex(tag))


def _patch_vr(data: bytes, tag: int, vr: bytes) -> bytes:
    for pos, t, _ in element_boundaries(data):
        if t == tag:
            b = bytearray(data)
            b[pos + 4 : pos + 6] = vr
            return bytes(b)
    raise KeyError(hex(tag))


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian object whose dataset inflates to about ``inflated_bytes``."""
    ds = _image()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta = io.BytesIO()
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    meta.write(b"\0" * 128 + b"DICM" + out.getvalue())
    # The dataset: a huge private OB element of zeros (explicit VR LE), then nothing else.
    body = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated_bytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body)]
    chunk = bytes(1 << 20)
    for _ in range(inflated_bytes // len(chunk)):
        parts.append(comp.compress(chunk))
    parts.append(comp.flush())
    return meta.getvalue() + b"".join(parts)


def pixel_bomb(kind: str, side: int = 12_000, declared: int = 16) -> bytes:
    """A ``declared`` x ``declared`` image whose one encapsulated frame's own header declares ``side`` x ``side``
    pixels (a decoder allocates what the codestream says): ``htj2k`` (a real codestream of zeros, a few hundred KB)
    or ``jpeg`` (a real 16 x 16 baseline JPEG whose SOF is rewritten)."""
    import numpy as np
    from pydicom.encaps import encapsulate

    ds = _image(rows=declared, cols=declared)
    if kind == "htj2k":
        import imagecodecs

        frame = imagecodecs.htj2k_encode(np.zeros((side, side), np.uint8), resolutions=5)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"
    else:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="JPEG", quality=90)
        b = bytearray(buf.getvalue())
        sof = b.find(b"\xff\xc0")
        struct.pack_into(">HH", b, sof + 5, side, side)
        frame = bytes(b)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 1
    return _save(ds)


def cases(*, bomb_bytes: int = 64 << 20) -> list[tuple[str, bytes]]:
    """Every malformed case the issue lists (the two HTTP-level cases, empty and non-multipart bodies, are built by
    the test itself). Each must be refused with a reason and leave nothing stored."""
    src = real_file()
    out: list[tuple[str, bytes]] = []
    bounds = element_boundaries(src)
    for pos, tag, _ in bounds:
        out.append((f"truncated-before-({tag >> 16:04X},{tag & 0xFFFF:04X})@{pos}", src[:pos]))
    last_pos, last_tag, _ = bounds[-1]
    assert last_tag == 0x7FE00010, "the real file should end with Pixel Data"
    out.append(("truncated-inside-pixel-data", src[: (last_pos + len(src)) // 2]))
    out.append(("length-0xFFFFFFF0", _patch_element_length(src, 0x7FE00010, 0xFFFFFFF0)))
    out.append(("length-0xFFF0-short-vr", _patch_element_length(src, 0x00100010, 0xFFF0)))
    out.append(("wrong-vr-ZZ", _patch_vr(src, 0x00100010, b"ZZ")))
    out.append(("wrong-vr-US-on-text", _patch_vr(src, 0x00080060, b"US")))
    out.append(("no-dicm", src[132:]))
    out.append(("dicm-missing-preamble-bytes", b"DICM" + src[132:]))
    out.append(("mz-preamble", b"MZ\x90\x00" + src[4:]))
    out.append(("elf-preamble", b"\x7fELF" + src[4:]))
    out.append(("deflate-bomb", deflate_bomb(bomb_bytes)))
    out.append(("htj2k-frame-declares-12000x12000", pixel_bomb("htj2k")))
    out.append(("jpeg-frame-declares-30000x30000", pixel_bomb("jpeg", side=30_000)))
    out.append(("rows-columns-overflow", _save(_image(Rows=65535, Columns=65535, NumberOfFrames="100000"))))
    bad = _image()
    bad.SOPInstanceUID = "1.2.3/../../../etc/passwd"
    out.append(("dotdot-in-sop-uid", _save(bad)))
    bad = _image()
    bad.StudyInstanceUID = "../1.2.3"
    out.append(("dotdot-in-study-uid", _save(bad)))
    out.append(("pixel-data-shorter-than-declared", _save(_image(rows=64, cols=64, PixelData=bytes(100)))))
    missing = _image()
    del missing.Modality
    out.append(("missing-modality", _save(missing)))
    out.append(("empty-part", b""))
    out.append(("random-bytes", bytes(range(256)) * 8))
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    target.mkdir(parents=True, exist_ok=True)
    for name, data in cases():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        (target / f"{safe}.dcm").write_bytes(data)
    print(f"wrote {len(cases())} cases to {target}")  # noqa: T201
    _ = pydicom  # keep the import for readers running this file directly
