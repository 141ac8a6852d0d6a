"""Instances in another transfer syntax, built from the original dataset and the stored (bit-exact) frames.

The stored HTJ2K frames decode to exactly the original pixels, so any original (uncompressed, JPEG-LS, JPEG 2000,
…) can be sent as Explicit/Implicit VR Little Endian or as HTJ2K without a codec for the original syntax.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from services.streaming_gateway.domain.media import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from shared.htj2k import decode


def transcode(original: bytes, frames: list[bytes], target: str) -> bytes:
    """The instance re-encoded in ``target`` (one of the media module's TRANSCODE_TARGETS)."""
    ds = pydicom.dcmread(io.BytesIO(original))
    if "PixelData" not in ds:
        raise ValueError("the instance has no pixel data to transcode")
    if target in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
        arrays = [decode(f) for f in frames]
        raw = b"".join(np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False)).tobytes() for a in arrays)
        if len(raw) % 2:
            raw += b"\x00"
        ds.PixelData = raw
        ds["PixelData"].VR = "OB" if int(ds.get("BitsAllocated", 16)) <= 8 else "OW"
        ds["PixelData"].is_undefined_length = False
        if arrays and arrays[0].ndim == 3:
            ds.PlanarConfiguration = 0
            if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
                ds.PhotometricInterpretation = "RGB"
    else:
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    for kw in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if kw in ds:
            del ds[kw]
    ds.file_meta.TransferSyntaxUID = UID(target)
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=target == IMPLICIT_VR_LE, little_endian=True, enforce_file_format=True)
    return buf.getvalue()
