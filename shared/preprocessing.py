"""The one preprocessing function shared by training (training/preprocess.py) and serving (the triage service).

Pure numpy, no torch, so the triage service imports it without the training stack, and a test proves both sides
produce identical arrays for the same frame. Steps, in order:

1. modality LUT: ``value * RescaleSlope + RescaleIntercept``;
2. VOI: the window (center/width, DICOM linear function) when given, otherwise a robust window from the 0.5 and 99.5
   percentiles of the frame, so exposure differences between patients do not leak into the input;
3. MONOCHROME1 is inverted so that dense tissue is always bright;
4. resize to ``size``×``size`` by area averaging followed by bilinear interpolation (deterministic, no library
   resampler whose version could change the output).

The output is float32 in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_SIZE = 224


@dataclass(frozen=True)
class FrameParams:
    """What preprocessing needs to know about a frame, from its DICOM attributes."""

    photometric: str = "MONOCHROME2"
    slope: float = 1.0
    intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(v: Any) -> float | None:
    if v is None or v == "":
        return None
    if isinstance(v, (list, tuple)) or (hasattr(v, "__iter__") and not isinstance(v, (str, bytes))):
        v = list(v)
        if not v:
            return None
        v = v[0]
    return float(v)


def params_from_dataset(ds: Any) -> FrameParams:
    """FrameParams from a pydicom Dataset."""
    return FrameParams(
        photometric=str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")),
        slope=_first(getattr(ds, "RescaleSlope", None)) or 1.0,
        intercept=_first(getattr(ds, "RescaleIntercept", None)) or 0.0,
        window_center=_first(getattr(ds, "WindowCenter", None)),
        window_width=_first(getattr(ds, "WindowWidth", None)),
    )


def params_from_dicom_json(meta: Mapping[str, Any]) -> FrameParams:
    """FrameParams from DICOM JSON (PS3.18 F.2), as stored in the metadata objects."""

    def val(tag: str) -> Any:
        el = meta.get(tag)
        if not el or "Value" not in el:
            return None
        v = el["Value"]
        return v[0] if len(v) == 1 else v

    return FrameParams(
        photometric=str(val("00280004") or "MONOCHROME2"),
        slope=_first(val("00281053")) or 1.0,
        intercept=_first(val("00281052")) or 0.0,
        window_center=_first(val("00281050")),
        window_width=_first(val("00281051")),
    )


def _resize_axis(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    m = a.shape[axis]
    if m == n:
        return a
    if m > 2 * n:  # area-average down to at most 2n first, which removes aliasing of thin structures (ribs)
        f = m // (2 * n) if m >= 4 * n else 1
        if f > 1:
            trim = (m // f) * f
            a = np.take(a, np.arange(trim), axis=axis)
            shape = list(a.shape)
            shape[axis : axis + 1] = [trim // f, f]
            a = a.reshape(shape).mean(axis=axis + 1)
            m = a.shape[axis]
    # bilinear with half-pixel centres
    x = (np.arange(n, dtype=np.float64) + 0.5) * (m / n) - 0.5
    x = np.clip(x, 0, m - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, m - 1)
    w = (x - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def resize(img: np.ndarray, size: int) -> np.ndarray:
    out = _resize_axis(img.astype(np.float32, copy=False), size, 0)
    return _resize_axis(out, size, 1).astype(np.float32)


def preprocess(pixels: np.ndarray, params: FrameParams | None = None, *, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Turn one stored frame (2-D, or H×W×3 which is converted to luminance) into the model input."""
    p = params or FrameParams()
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[-1] == 3:
        a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    if a.ndim != 2:
        raise ValueError(f"preprocess expects a 2-D frame, got shape {a.shape}")
    v = a.astype(np.float32) * np.float32(p.slope) + np.float32(p.intercept)
    if p.window_center is not None and p.window_width is not None and p.window_width >= 1:
        lo = p.window_center - 0.5 - (p.window_width - 1) / 2
        hi = p.window_center - 0.5 + (p.window_width - 1) / 2
    else:
        lo, hi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    v = np.clip((v - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    if p.photometric == "MONOCHROME1":
        v = 1.0 - v
    return np.ascontiguousarray(resize(v, size), dtype=np.float32)
