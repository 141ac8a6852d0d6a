"""Decoding the frames of a parsed instance, whatever its transfer syntax, and transcoding them to HTJ2K.

Decoding goes through pydicom's pixel backends (numpy for native data, pylibjpeg for JPEG, JPEG-LS, JPEG 2000 and
RLE). Frames are kept as stored: no modality LUT, no windowing, MONOCHROME1 stays inverted; only YBR colour is
converted to RGB, because a lossless HTJ2K stream of full-resolution RGB is what viewers can display directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels

from shared import htj2k
from shared.dicom.errors import CANNOT_UNDERSTAND, DicomRejection


@dataclass
class EncodedFrames:
    """HTJ2K codestreams of every frame, with what the index needs to serve them progressively."""

    codestreams: list[bytes]
    offsets: list[list[int]]
    levels: int
    photometric: str

    @property
    def total_bytes(self) -> int:
        return sum(len(c) for c in self.codestreams)


def output_photometric(ds: Dataset) -> str:
    """The photometric interpretation of the frames radloop stores (YBR becomes RGB)."""
    pi = str(ds.PhotometricInterpretation).strip()
    return "RGB" if pi.startswith("YBR") else pi


def iter_frames(ds: Dataset) -> Iterator[np.ndarray]:
    """Yield each decoded frame (rows x columns, or rows x columns x 3)."""
    pi = str(ds.PhotometricInterpretation).strip()
    # raw=True keeps the stored values; YBR is converted explicitly so every backend agrees.
    yield from iter_pixels(ds, raw=not pi.startswith("YBR"), as_rgb=pi.startswith("YBR"))


def _fit_dtype(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    if frame.dtype in (np.uint8, np.int8, np.uint16, np.int16):
        return frame
    signed = int(ds.PixelRepresentation) == 1
    bits = int(ds.BitsAllocated)
    target = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}.get((bits, signed))
    if target is None:
        raise DicomRejection(CANNOT_UNDERSTAND, f"Decoded pixels of dtype {frame.dtype} cannot be stored losslessly.",
                             kind="unsupported-dtype")
    out = frame.astype(target)
    if not np.array_equal(out, frame):
        raise DicomRejection(CANNOT_UNDERSTAND, f"Decoded pixels of dtype {frame.dtype} do not fit {np.dtype(target)} "
                             "without loss.", kind="unsupported-dtype")
    return out


def transcode(ds: Dataset, *, expected_frames: int, sop_uid: str | None = None) -> EncodedFrames:
    """Decode every frame, encode it as HTJ2K Lossless RPCL and verify the round trip is bit-exact.

    Raises :class:`DicomRejection` (0xC000) when the pixels cannot be decoded, the frame count or shape does not
    match the header, or a round trip is not exact (the instance is then not stored at all).
    """
    rows, cols, spp = int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel)
    shape = (rows, cols) if spp == 1 else (rows, cols, spp)
    codestreams: list[bytes] = []
    offsets: list[list[int]] = []
    levels = htj2k.levels_for(rows, cols)
    try:
        for i, frame in enumerate(iter_frames(ds)):
            if i >= expected_frames:
                raise DicomRejection(CANNOT_UNDERSTAND, f"The pixel data holds more than the {expected_frames} frame(s) "
                                     "NumberOfFrames declares.", kind="frame-count", sop_uid=sop_uid)
            if frame.shape != shape:
                raise DicomRejection(CANNOT_UNDERSTAND, f"Frame {i + 1} decodes to shape {frame.shape}, but the header "
                                     f"declares {shape}.", kind="frame-shape", sop_uid=sop_uid)
            frame = _fit_dtype(frame, ds)
            cs = htj2k.encode(frame, levels=levels)
            back = htj2k.decode(cs)
            if back.dtype != frame.dtype or back.shape != frame.shape or not np.array_equal(back, frame):
                raise DicomRejection(CANNOT_UNDERSTAND, f"Frame {i + 1} does not round-trip bit-exactly through HTJ2K "
                                     f"({frame.dtype}, shape {frame.shape}); it is not stored.",
                                     kind="roundtrip-mismatch", sop_uid=sop_uid)
            codestreams.append(cs)
            offsets.append(htj2k.resolution_offsets(cs))
    except DicomRejection:
        raise
    except Exception as exc:
        msg = str(exc).strip().split("\n")[0][:300] or type(exc).__name__
        raise DicomRejection(CANNOT_UNDERSTAND, f"The pixel data cannot be decoded: {msg}.", kind="undecodable-pixels",
                             sop_uid=sop_uid) from None
    if len(codestreams) != expected_frames:
        raise DicomRejection(CANNOT_UNDERSTAND, f"The pixel data holds {len(codestreams)} frame(s) but NumberOfFrames "
                             f"declares {expected_frames}.", kind="frame-count", sop_uid=sop_uid)
    return EncodedFrames(codestreams=codestreams, offsets=offsets, levels=levels, photometric=output_photometric(ds))
