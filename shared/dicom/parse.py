"""Safe parsing of untrusted DICOM Part 10 bytes.

pydicom is permissive by design; an ingestion endpoint must not be. :func:`parse_safely` closes these hazards, in
this order, and refuses with a :class:`~shared.dicom.errors.DicomRejection` naming the reason:

1. a size cap before anything is parsed;
2. the ``DICM`` prefix at byte 128 (never ``force=True``), and no executable magic (MZ/ELF/...) in the preamble, so
   polyglot files are refused;
3. strict validation (``reading_validation_mode = RAISE``) while every element, nested sequences included, is
   converted, so values that do not fit their VR or length are errors, not warnings;
4. a dataset that does not end exactly at the end of the bytes (a truncated element header silently ends a pydicom
   dataset) is refused;
5. Deflated Explicit VR Little Endian is inflated by us with a bound (pydicom would inflate without one);
6. the type-1 identifying attributes and valid UIDs (they become storage keys);
7. the image pixel module, with the declared size and frame count bounded and native pixel data at least as long as
   declared.
"""

from __future__ import annotations

import contextlib
import io
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
)

from shared.dicom import codestream
from shared.dicom.errors import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    DicomRejection,
)
from shared.dicom.sop_classes import NON_IMAGE_SOP_CLASSES
from shared.exceptions import InvalidUIDError
from shared.uids import validate_uid

#: Magic numbers of executables and archives that must not sit in a DICOM preamble (PS3.10 §7.5 allows any
#: preamble, which is how DICOM/PE polyglot malware hides; see CVE-2019-11687).
_EXECUTABLE_MAGIC = (b"MZ", b"\x7fELF", b"#!", b"\xca\xfe\xba\xbe", b"\xfe\xed\xfa", b"\xcf\xfa\xed\xfe", b"PK\x03\x04")

#: Type-1 attributes every stored instance needs: they key storage and the index.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
REQUIRED_IMAGE = ("Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PhotometricInterpretation",
                  "PixelRepresentation")


@dataclass(frozen=True)
class ParseLimits:
    """Bounds applied while parsing one instance."""

    #: Largest accepted Part 10 object, in bytes, before parsing.
    max_bytes: int = 1 << 30
    #: Largest inflated dataset for the Deflated transfer syntax.
    max_inflated_bytes: int = 256 << 20
    #: Largest declared decoded pixel size (Rows x Columns x Samples x Bits/8 x Frames).
    max_pixel_bytes: int = 1 << 30
    #: Largest frame side accepted.
    max_side: int = 16384
    #: Most frames per instance: each frame costs an encode, an S3 PUT and an entry in the index's offset table, so
    #: the bound is on the count, not only on the pixel bytes (500,000 frames of 1x1 are a few hundred KB).
    max_frames: int = 20_000


@dataclass
class ParsedInstance:
    """A dataset that passed every check, with the facts the pipeline needs."""

    dataset: FileDataset
    transfer_syntax: UID
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    rows: int
    columns: int
    number_of_frames: int
    expected_pixel_bytes: int
    #: Where the data set starts in the received bytes (after the preamble and file meta).
    dataset_offset: int = 0


_strict_lock = threading.Lock()
_strict_depth = 0
_strict_saved: int | None = None


@contextlib.contextmanager
def strict_reading() -> Iterator[None]:
    """pydicom's strict validation mode (``RAISE``) within the block, restored afterwards.

    The setting is process-global, so nested and concurrent blocks (thread pools) are counted: the previous mode comes
    back only when the last block exits, never while another thread is still parsing.
    """
    global _strict_depth, _strict_saved
    with _strict_lock:
        if _strict_depth == 0:
            _strict_saved = config.settings.reading_validation_mode
        _strict_depth += 1
        config.settings.reading_validation_mode = config.RAISE
    try:
        yield
    finally:
        with _strict_lock:
            _strict_depth -= 1
            if _strict_depth == 0 and _strict_saved is not None:
                config.settings.reading_validation_mode = _strict_saved


def _reject(code: int, reason: str, kind: str, **kw: str | None) -> DicomRejection:
    return DicomRejection(code, reason, kind=kind, **kw)


def check_envelope(data: bytes, limits: ParseLimits) -> None:
    """The checks that need no parsing: size, the ``DICM`` prefix, the preamble."""
    if not data:
        raise _reject(CANNOT_UNDERSTAND, "The DICOM object is empty (0 bytes).", "empty")
    if len(data) > limits.max_bytes:
        raise _reject(OUT_OF_RESOURCES, f"The DICOM object is {len(data)} bytes; at most {limits.max_bytes} bytes are "
                      "accepted per instance.", "too-large")
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _reject(CANNOT_UNDERSTAND, "The object is not a DICOM Part 10 file: the 'DICM' prefix expected at byte "
                      f"128 was {data[128:132]!r}.", "no-dicm-prefix")
    for magic in _EXECUTABLE_MAGIC:
        if data.startswith(magic):
            raise _reject(CANNOT_UNDERSTAND, f"The 128-byte preamble starts with executable or archive magic {magic!r}; "
                          "polyglot DICOM files are refused.", "executable-preamble")


def _read_meta(data: bytes) -> tuple[Dataset, int]:
    from pydicom.filereader import _read_file_meta_info

    fp = io.BytesIO(data)
    fp.seek(132)
    try:
        with strict_reading():
            meta = _read_file_meta_info(fp)
            for _ in meta.iterall():
                pass
    except Exception as exc:
        raise _reject(CANNOT_UNDERSTAND, f"The file meta information (group 0002) cannot be parsed: {_short(exc)}.",
                      "bad-file-meta") from None
    return meta, fp.tell()


def _inflate_bounded(data: bytes, meta: Dataset, meta_end: int, limits: ParseLimits) -> bytes:
    """Rewrite a Deflated object as Explicit VR Little Endian, refusing inflation past the bound."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    d = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = d.decompress(data[meta_end:], limits.max_inflated_bytes)
    except zlib.error as exc:
        raise _reject(CANNOT_UNDERSTAND, f"The deflated dataset cannot be inflated: {exc}.", "bad-deflate") from None
    if d.unconsumed_tail:
        raise _reject(OUT_OF_RESOURCES, f"The deflated dataset inflates to more than {limits.max_inflated_bytes} bytes "
                      f"(from {len(data) - meta_end} compressed bytes); refused as a decompression bomb.",
                      "deflate-bomb")
    meta = Dataset(meta)  # type: ignore[assignment]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    from pydicom.dataset import FileMetaDataset

    fm = FileMetaDataset(meta)
    write_file_meta_info(out, fm, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + out.getvalue() + body


def _short(exc: BaseException, limit: int = 300) -> str:
    msg = str(exc).strip().rstrip(".") or type(exc).__name__
    return msg if len(msg) <= limit else msg[:limit] + "..."


def parse_safely(data: bytes, limits: ParseLimits | None = None) -> ParsedInstance:
    """Parse untrusted Part 10 bytes, or raise :class:`DicomRejection` with the reason (see module docstring)."""
    limits = limits or ParseLimits()
    check_envelope(data, limits)
    meta, meta_end = _read_meta(data)
    ts_raw = meta.get("TransferSyntaxUID")
    try:
        ts = UID(validate_uid(str(ts_raw) if ts_raw is not None else "", what="TransferSyntaxUID"))
    except InvalidUIDError as exc:
        raise _reject(CANNOT_UNDERSTAND, f"The file meta information has no usable transfer syntax: {exc}.",
                      "bad-transfer-syntax") from None
    if ts not in AllTransferSyntaxes:
        raise _reject(CANNOT_UNDERSTAND, f"Transfer syntax {ts} is not one this service can decode; send one of the "
                      "standard uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE transfer syntaxes.", "unsupported-ts")
    source = data
    if ts == DeflatedExplicitVRLittleEndian:
        source = _inflate_bounded(data, meta, meta_end, limits)
    fp = io.BytesIO(source)
    try:
        with strict_reading():
            ds = pydicom.dcmread(fp, force=False)
            end = fp.tell()
            # Convert every element now, inside strict mode: pydicom converts raw elements lazily on access.
            _walk(ds, 0)
    except DicomRejection:
        raise
    except Exception as exc:
        raise _reject(CANNOT_UNDERSTAND, f"The dataset cannot be parsed: {_short(exc)}.", "malformed-dataset") from None
    if end != len(source):
        raise _reject(CANNOT_UNDERSTAND, f"The dataset ends at byte {end} but the object has {len(source)} bytes: "
                      "trailing bytes or a truncated element header.", "truncated")
    parsed = _validate(ds, ts, limits)
    parsed.dataset_offset = meta_end
    return parsed


def _walk(ds: Dataset, depth: int) -> None:
    """Check each raw element's declared length and VR, then convert it (recursing into sequence items)."""
    if depth > 16:
        raise _reject(CANNOT_UNDERSTAND, "Sequences are nested more than 16 levels deep.", "deep-nesting")
    for tag in list(ds._dict.keys()):
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement):
            _check_raw(raw)
        elem = ds[tag]
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                _walk(item, depth + 1)


def _check_raw(raw: RawDataElement) -> None:
    tag = BaseTag(raw.tag)
    if raw.length != 0xFFFFFFFF and raw.value is not None and len(raw.value) != raw.length:
        raise _reject(CANNOT_UNDERSTAND, f"Element {tag} declares a value length of {raw.length} bytes but only "
                      f"{len(raw.value)} bytes follow.", "bad-length")
    if raw.VR and not tag.is_private and tag.group not in (0x0000, 0x0002) and raw.VR != "UN":
        try:
            expected = dictionary_VR(tag)
        except KeyError:
            return
        allowed = {v.strip() for v in expected.split(" or ")}
        if raw.VR not in allowed:
            raise _reject(CANNOT_UNDERSTAND, f"Element {tag} is encoded with VR {raw.VR}, but the data dictionary "
                          f"defines it as {expected}.", "wrong-vr")


def _text(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword)
    return "" if v is None else str(v).strip()


def _validate(ds: FileDataset, ts: UID, limits: ParseLimits) -> ParsedInstance:
    uids: dict[str, str] = {}
    for kw in REQUIRED_UIDS:
        value = _text(ds, kw)
        if not value:
            raise _reject(DATASET_MISMATCH, f"The type-1 attribute {kw} is missing or empty.", f"missing-{kw}",
                          sop_uid=uids.get("SOPInstanceUID"))
        try:
            uids[kw] = validate_uid(value, what=kw)
        except InvalidUIDError as exc:
            raise _reject(CANNOT_UNDERSTAND, f"{exc}.", f"invalid-{kw}") from None
    ref = {"sop_uid": uids["SOPInstanceUID"], "sop_class_uid": uids["SOPClassUID"],
           "study_uid": uids["StudyInstanceUID"]}
    modality = _text(ds, "Modality")
    if not modality:
        raise _reject(DATASET_MISMATCH, "The type-1 attribute Modality is missing or empty.", "missing-Modality", **ref)
    if len(modality) > 16 or not modality.replace("_", "").isalnum():
        raise _reject(CANNOT_UNDERSTAND, f"Modality {modality[:20]!r} must be a code string of letters and digits.",
                      "invalid-Modality", **ref)
    if "PixelData" not in ds and uids["SOPClassUID"] in NON_IMAGE_SOP_CLASSES:
        # A structured report or key object selection: no frames to transcode (docs/interop.md).
        return ParsedInstance(
            dataset=ds, transfer_syntax=ts, study_uid=uids["StudyInstanceUID"], series_uid=uids["SeriesInstanceUID"],
            sop_uid=uids["SOPInstanceUID"], sop_class_uid=uids["SOPClassUID"], modality=modality, rows=0, columns=0,
            number_of_frames=0, expected_pixel_bytes=0,
        )
    for kw in REQUIRED_IMAGE:
        if ds.get(kw) is None or (kw == "PhotometricInterpretation" and not _text(ds, kw)):
            raise _reject(DATASET_MISMATCH, f"The image attribute {kw} is missing, so this is not an image this service "
                          "can store.", f"missing-{kw}", **ref)
    if "PixelData" not in ds:
        raise _reject(DATASET_MISMATCH, "The dataset has no Pixel Data (7FE0,0010); only images are accepted.",
                      "missing-PixelData", **ref)
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp, bits_alloc = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise _reject(CANNOT_UNDERSTAND, f"NumberOfFrames {ds.get('NumberOfFrames')!r} is not an integer.",
                      "invalid-NumberOfFrames", **ref) from None
    if not (1 <= rows <= limits.max_side and 1 <= cols <= limits.max_side):
        raise _reject(OUT_OF_RESOURCES, f"Rows x Columns {rows} x {cols} is outside 1..{limits.max_side} per side.",
                      "bad-dimensions", **ref)
    if frames > limits.max_frames:
        raise _reject(OUT_OF_RESOURCES, f"NumberOfFrames {frames} exceeds the bound of {limits.max_frames} frames per "
                      "instance.", "too-many-frames", **ref)
    if frames < 1 or spp not in (1, 3) or bits_alloc not in (8, 16):
        raise _reject(CANNOT_UNDERSTAND, f"NumberOfFrames {frames}, SamplesPerPixel {spp} and BitsAllocated {bits_alloc} "
                      "are not supported: expected at least 1 frame, 1 or 3 samples, and 8 or 16 bits allocated.",
                      "unsupported-pixel-format", **ref)
    bits_stored = int(ds.BitsStored)
    if not 1 <= bits_stored <= bits_alloc:
        raise _reject(CANNOT_UNDERSTAND, f"BitsStored {bits_stored} must be between 1 and BitsAllocated {bits_alloc}.",
                      "invalid-BitsStored", **ref)
    expected = rows * cols * spp * (bits_alloc // 8) * frames
    if expected > limits.max_pixel_bytes:
        raise _reject(OUT_OF_RESOURCES, f"The declared pixel data ({rows} x {cols} x {spp} samples x {bits_alloc} bits x "
                      f"{frames} frames = {expected} bytes) exceeds the bound of {limits.max_pixel_bytes} bytes.",
                      "pixels-too-large", **ref)
    if not ts.is_compressed:
        have = len(ds.PixelData)
        if have < expected:
            raise _reject(DATASET_MISMATCH, f"Pixel Data holds {have} bytes but Rows x Columns x SamplesPerPixel x "
                          f"BitsAllocated x NumberOfFrames declares {expected} bytes.", "short-pixel-data", **ref)
    else:
        _check_frame_headers(ds, str(ts), rows, cols, spp, frames, ref)
    return ParsedInstance(
        dataset=ds, transfer_syntax=ts, study_uid=uids["StudyInstanceUID"], series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"], sop_class_uid=uids["SOPClassUID"], modality=modality, rows=rows,
        columns=cols, number_of_frames=frames, expected_pixel_bytes=expected,
    )


def _check_frame_headers(ds: Dataset, ts: str, rows: int, cols: int, spp: int, frames: int,
                         ref: dict[str, str]) -> None:
    """Refuse an encapsulated frame whose own header declares another size than the image pixel module (a decoder
    allocates what the codestream declares: :mod:`shared.dicom.codestream`), before anything decodes it."""
    if ts not in codestream.J2K_SYNTAXES | codestream.JPEG_SYNTAXES:
        return
    try:
        for k, fragments in enumerate(generate_fragmented_frames(ds.PixelData, number_of_frames=frames), 1):
            head = fragments[0] if len(fragments[0]) >= codestream.SEARCH_BYTES else b"".join(fragments)
            try:
                h = codestream.frame_header(head, ts)
            except codestream.HeaderError as exc:
                raise _reject(CANNOT_UNDERSTAND, f"Frame {k} cannot be read: {exc}.", "bad-frame-header",
                              **ref) from None
            if h is not None and (h.columns, h.rows, h.components) != (cols, rows, spp):
                raise _reject(CANNOT_UNDERSTAND, f"Frame {k}'s codestream declares {h.columns} x {h.rows} pixels and "
                              f"{h.components} component(s), but Columns x Rows is {cols} x {rows} with "
                              f"SamplesPerPixel {spp}; it is not decoded.", "frame-header-mismatch", **ref)
            if k >= frames:
                return
    except DicomRejection:
        raise
    except Exception as exc:  # pydicom could not split the encapsulated pixel data into items and frames
        raise _reject(CANNOT_UNDERSTAND, f"The encapsulated pixel data cannot be split into frames: {_short(exc)}.",
                      "bad-encapsulation", **ref) from None
