"""HTJ2K Lossless RPCL codestreams: encode, decode, and the byte prefixes that decode each resolution.

Encoding uses imagecodecs (it bundles OpenJPH; see docs/architecture.md for why). Every frame radloop stores is:

- reversible 5/3 wavelet (lossless), RPCL progression, TLM markers, one tile-part per resolution, so that the first
  *r* tile-parts plus an EOC marker decode exactly the image at resolution level *r* (PS3.5 §10.18, transfer syntax
  1.2.840.10008.1.2.4.202);
- with enough decomposition levels that the lowest resolution is at most 64 px on its longest side.

:func:`resolution_offsets` walks the codestream's tile-part headers (SOT markers) and returns, for each resolution
level from the lowest, how many bytes of the stream are needed to decode it. The gateway serves those prefixes for
progressive display, and viewers can ask for exactly what they need.
"""

from __future__ import annotations

import math
import struct

import imagecodecs
import numpy as np

HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K = "1.2.840.10008.1.2.4.203"

_SOC, _SOT, _EOC = b"\xff\x4f", b"\xff\x90", b"\xff\xd9"


class CodestreamError(ValueError):
    """A codestream is not the HTJ2K layout radloop writes."""


def levels_for(rows: int, columns: int, *, max_lowest: int = 64) -> int:
    """Decomposition levels so that the lowest resolution is ≤ ``max_lowest`` px (at least 1, at most 32)."""
    longest = max(rows, columns, 1)
    return max(1, min(32, math.ceil(math.log2(longest / max_lowest)) if longest > max_lowest else 1))


def encode(frame: np.ndarray, *, levels: int | None = None) -> bytes:
    """Encode one frame (2-D grey or H×W×3 colour; uint8/int8/uint16/int16) losslessly as RPCL HTJ2K."""
    if frame.ndim not in (2, 3):
        raise ValueError(f"a frame must be 2-D (rows, columns) or 3-D (rows, columns, samples); got shape {frame.shape}")
    if frame.dtype not in (np.uint8, np.int8, np.uint16, np.int16):
        raise ValueError(f"pixel dtype {frame.dtype} cannot be stored losslessly as HTJ2K; expected 8 or 16 bit integers")
    rows, cols = frame.shape[:2]
    lv = levels if levels is not None else levels_for(rows, cols)
    data = imagecodecs.htj2k_encode(
        np.ascontiguousarray(frame),
        resolutions=lv,  # imagecodecs counts decomposition levels here
        tlm=True,
        tilepart=imagecodecs.HTJ2K.TILEPART.RESOLUTIONS,
    )
    return bytes(data)


def decode(codestream: bytes, *, skip_levels: int = 0) -> np.ndarray:
    """Decode a codestream, optionally dropping the ``skip_levels`` highest resolution levels."""
    return np.asarray(imagecodecs.htj2k_decode(codestream, skipres=skip_levels) if skip_levels else
                      imagecodecs.htj2k_decode(codestream))


def decode_prefix(prefix: bytes, *, total_levels: int, resolution: int) -> np.ndarray:
    """Decode a byte prefix that holds resolution levels 0..``resolution`` (0 is the lowest)."""
    data = prefix if prefix.endswith(_EOC) else prefix + _EOC
    return decode(data, skip_levels=total_levels - resolution)


def resolution_offsets(codestream: bytes) -> list[int]:
    """Byte counts needed for each resolution level, lowest first; the last equals ``len(codestream)``.

    Raises :class:`CodestreamError` when the stream does not start with SOC or its tile-parts are malformed.
    """
    if not codestream.startswith(_SOC):
        raise CodestreamError("codestream does not start with an SOC marker (FF4F)")
    pos = codestream.find(_SOT)
    ends: list[int] = []
    n = len(codestream)
    while 0 <= pos < n and codestream[pos : pos + 2] == _SOT:
        if pos + 12 > n:
            raise CodestreamError(f"truncated SOT marker at byte {pos}")
        # SOT: marker(2) Lsot(2) Isot(2) Psot(4) TPsot(1) TNsot(1); Psot is the tile-part length from the marker.
        psot = struct.unpack(">I", codestream[pos + 6 : pos + 10])[0]
        if psot == 0:  # last tile-part runs to EOC
            psot = n - 2 - pos
        end = pos + psot
        if end > n:
            raise CodestreamError(f"tile-part at byte {pos} claims {psot} bytes, past the end of the stream")
        ends.append(end)
        pos = end
    if not ends:
        raise CodestreamError("codestream has no tile-parts (SOT markers)")
    if ends[-1] == n - 2 and codestream[-2:] == _EOC:
        ends[-1] = n
    return ends


def number_of_levels(codestream: bytes) -> int:
    """Decomposition levels of the first tile component (from the COD marker)."""
    pos = codestream.find(b"\xff\x52")
    if pos < 0 or pos + 10 > len(codestream):
        raise CodestreamError("codestream has no COD marker")
    return int(codestream[pos + 9])
