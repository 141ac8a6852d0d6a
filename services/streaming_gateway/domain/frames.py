"""Frames as the gateway caches them: :class:`Frame` (an HTJ2K codestream with its digest and resolution offsets),
:class:`Decoded` (a frame's decoded pixels, as little-endian bytes with their array's shape and type), and
:class:`FrameCache`, an LRU of frames bounded by the bytes of their codestreams. A frame larger than the budget is
served but never cached. Pure: no storage access (the S3 reads are in ``adapters/frame_store.py``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from shared.htj2k import CodestreamError, number_of_levels, resolution_offsets


@dataclass(frozen=True)
class Frame:
    """One stored frame: the HTJ2K codestream, a strong hash of it, and its resolution prefixes."""

    data: bytes
    digest: str
    offsets: tuple[int, ...]
    levels: int

    @classmethod
    def of(cls, data: bytes) -> Frame:
        """Wrap a codestream, computing its digest and resolution offsets."""
        try:
            offsets = tuple(resolution_offsets(data))
            levels = number_of_levels(data)
        except CodestreamError:
            offsets, levels = (len(data),), 0
        return cls(data, hashlib.blake2b(data, digest_size=16).hexdigest(), offsets, levels)


@dataclass(frozen=True)
class Decoded(Frame):
    """A frame's decoded pixels (``data``: little-endian, C order), the digest of the codestream they came from, and
    the array's ``shape`` and ``dtype`` (a NumPy type string such as ``<i2``), so the bytes a client was sent as
    application/octet-stream and the pixels a rendered image is made from are one decode."""

    shape: tuple[int, ...] = ()
    dtype: str = ""

    @classmethod
    def of_array(cls, pixels: np.ndarray, digest: str) -> Decoded:
        a = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"), copy=False))
        return cls(a.tobytes(), digest, (), 0, a.shape, a.dtype.str)

    def array(self) -> np.ndarray:
        """The pixels (read-only, no copy)."""
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)


class FrameCache:
    """LRU of :class:`Frame` by key, bounded by the total bytes of the codestreams."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = max(0, budget_bytes)
        self.bytes = 0
        self.max_bytes_seen = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._frames: OrderedDict[str, Frame] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._frames

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, key: str) -> Frame | None:
        """The cached frame (now most recently used), or None."""
        f = self._frames.get(key)
        if f is None:
            self.misses += 1
            return None
        self.hits += 1
        self._frames.move_to_end(key)
        return f

    def put(self, key: str, frame: Frame) -> None:
        """Cache a frame, evicting least recently used ones so the budget always holds."""
        size = len(frame.data)
        if size > self.budget:
            return
        old = self._frames.pop(key, None)
        if old is not None:
            self.bytes -= len(old.data)
        # Evict first, so the budget holds at every instant, not only after the insert.
        while self.bytes + size > self.budget and self._frames:
            _, ev = self._frames.popitem(last=False)
            self.bytes -= len(ev.data)
            self.evictions += 1
        self._frames[key] = frame
        self.bytes += size
        self.max_bytes_seen = max(self.max_bytes_seen, self.bytes)
