"""Rendered images and thumbnails (PS3.18 §8.3.5 and §9.5): windowed 8-bit JPEG or PNG from stored frames.

Runs in a worker thread (decode, window, resize, encode are all CPU work). Parameters are validated here with
full-sentence reasons. ``window=center,width,function`` (linear, linear-exact, sigmoid) defaults to the instance's
VOI LUT (WindowCenter/WindowWidth) and then to the pixel range; MONOCHROME1 is inverted so that white means dense.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from services.streaming_gateway.domain.errors import BadRequest, NotAcceptable
from services.streaming_gateway.domain.numbers import is_uint, parse_decimal
from shared.htj2k import decode


@dataclass(frozen=True)
class RenderParams:
    """Validated parameters of a rendered request."""
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90
    #: The viewport's source region (PS3.18 §8.3.5.1.3: sx, sy, sw, sh in the image's pixels; a negative width or
    #: height flips that axis). It was ignored, so a crop came back as the whole image (found by a review).
    region: tuple[int, int, int, int] | None = None


def negotiate_rendered(accept: str | None) -> str:
    """The rendered media type for an Accept header (JPEG by default), or 406."""
    from services.streaming_gateway.domain.media import parse_accept

    for r in parse_accept(accept):
        if r.type in ("image/jpeg", "image/png"):
            return r.type
        if r.type in ("*/*", "image/*"):
            return "image/jpeg"
    raise NotAcceptable(f"rendered images are served as image/jpeg or image/png, not {accept!r}")


def parse_render_params(accept: str | None, window: str | None, viewport: str | None, quality: str | None) -> RenderParams:
    """Validate ``window``, ``viewport`` and ``quality`` (400 with the reason) and negotiate the type."""
    mt = negotiate_rendered(accept)
    win = None
    if window is not None:
        bits = [b.strip() for b in window.split(",")]
        if len(bits) not in (2, 3):
            raise BadRequest(f"window value {window!r} must be center,width[,function]")
        try:
            c, w = parse_decimal(bits[0], "window center"), parse_decimal(bits[1], "window width")
        except BadRequest:
            raise BadRequest(f"window value {window[:60]!r} must have numeric center and width") from None
        fn = bits[2].lower() if len(bits) == 3 else "linear"
        if fn not in ("linear", "linear-exact", "sigmoid"):
            raise BadRequest(f"window function {fn!r} is not one of linear, linear-exact, sigmoid")
        if not (math.isfinite(c) and math.isfinite(w)) or w <= 0 or (fn == "linear" and w < 1):
            raise BadRequest(f"window width in {window!r} must be positive (at least 1 for linear)")
        win = (c, w, fn)
    vp = None
    region = None
    if viewport is not None:
        bits = [b.strip() for b in viewport.split(",")]
        if len(bits) not in (2, 6) or not (is_uint(bits[0]) and is_uint(bits[1])):
            raise BadRequest(f"viewport value {viewport[:60]!r} must be vw,vh or vw,vh,sx,sy,sw,sh in pixels "
                             "(digits 0-9; sw and sh may be negative to flip)")
        vw, vh = int(bits[0]), int(bits[1])
        if not (0 < vw <= 4096 and 0 < vh <= 4096):
            raise BadRequest(f"viewport {viewport!r} must be between 1 and 4096 pixels on each side")
        vp = (vw, vh)
        if len(bits) == 6:
            sx, sy, sw, sh = bits[2:]
            signed = [w.removeprefix("-") for w in (sw, sh)]
            if not (is_uint(sx) and is_uint(sy) and all(is_uint(w) for w in signed)):
                raise BadRequest(f"viewport source region in {viewport[:60]!r} must be sx,sy,sw,sh in pixels "
                                 "(sx, sy at least 0; sw, sh non-zero, negative to flip)")
            region = (int(sx), int(sy), int(sw), int(sh))
            if 0 in region[2:] or max(abs(v) for v in region) > 65536:
                raise BadRequest(f"viewport source region in {viewport!r} must have a non-zero width and height "
                                 "within 65536 pixels")
    q = 90
    if quality is not None:
        if not is_uint(quality.strip(" ")):
            raise BadRequest(f"quality value {quality[:60]!r} must be an integer from 1 to 100")
        q = int(quality)
        if not 1 <= q <= 100:
            raise BadRequest(f"quality value {quality!r} must be an integer from 1 to 100")
    return RenderParams(mt, win, vp, q, region)


def _first_number(meta: dict[str, Any], tag: str) -> float | None:
    el = meta.get(tag)
    if not el or not el.get("Value"):
        return None
    try:
        return float(el["Value"][0])
    except (TypeError, ValueError):
        return None


def _string(meta: dict[str, Any], tag: str) -> str | None:
    el = meta.get(tag)
    if not el or not el.get("Value"):
        return None
    return str(el["Value"][0])


def skip_for_viewport(rows: int, cols: int, levels: int, viewport: tuple[int, int] | None,
                      region: tuple[int, int, int, int] | None = None) -> int:
    """How many resolution levels can be dropped so that the image (or its source ``region``) still covers the
    viewport."""
    if viewport is None:
        return 0
    if region is not None:
        cols, rows = min(abs(region[2]), cols) or cols, min(abs(region[3]), rows) or rows
    skip = 0
    while skip < levels and math.ceil(rows / 2 ** (skip + 1)) >= viewport[1] and math.ceil(cols / 2 ** (skip + 1)) >= viewport[0]:
        skip += 1
    return skip


def render(codestream: bytes, dicom_json: str | None, photometric: str | None, params: RenderParams, *,
           skip_levels: int = 0, pixels: np.ndarray | None = None) -> bytes:
    """Decode (optionally at reduced resolution), window, fit into the viewport and encode. ``pixels``: the
    codestream already decoded at ``skip_levels`` (the gateway's decoded cache), so it is not decoded again."""
    meta = json.loads(dicom_json) if dicom_json else {}
    px = pixels if pixels is not None else decode(codestream, skip_levels=skip_levels)
    photometric = (photometric or _string(meta, "00280004") or "MONOCHROME2").upper()
    if px.ndim == 3 and px.shape[2] in (3, 4):
        img8 = px[..., :3].astype(np.uint8) if px.dtype == np.uint8 else _scale_to_8bit(px[..., :3])
        mode = "RGB"
    else:
        if np.issubdtype(px.dtype, np.integer) and int(px.max()) - int(px.min()) < _LUT_MAX:
            # Integer pixels (every CT, CR, MR frame): window each stored value once, then look the pixels up. The
            # same arithmetic on the same values as below, so the same bytes, without float work per pixel.
            lo = int(px.min())
            lut = _gray_8bit(np.arange(lo, int(px.max()) + 1, dtype=np.float64), meta, params, photometric)
            img8 = lut[px.astype(np.int64, copy=False) - lo]
        else:
            img8 = _gray_8bit(px.astype(np.float64), meta, params, photometric)
        mode = "L"
    img = Image.fromarray(img8, mode=mode)
    if params.region is not None:
        img = _source_region(img, params.region, 2 ** skip_levels)
    if params.viewport is not None:
        vw, vh = params.viewport
        scale = min(vw / img.width, vh / img.height)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if params.media_type == "image/png":
        img.save(buf, format="PNG", compress_level=3)
    else:
        img.save(buf, format="JPEG", quality=params.quality)
    return buf.getvalue()


def _source_region(img: Image.Image, region: tuple[int, int, int, int], scale: int) -> Image.Image:
    """Crop to the viewport's source region (given in full-resolution pixels; the image may be ``scale`` times
    smaller), flipping an axis whose extent is negative; 400 when the region misses the image."""
    sx, sy, sw, sh = region
    x0, y0 = (sx if sw > 0 else sx + sw) / scale, (sy if sh > 0 else sy + sh) / scale
    x1, y1 = x0 + abs(sw) / scale, y0 + abs(sh) / scale
    box = (max(0, round(x0)), max(0, round(y0)), min(img.width, round(x1)), min(img.height, round(y1)))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise BadRequest(f"viewport source region {sx},{sy},{sw},{sh} lies outside the image "
                         f"({img.width * scale} x {img.height * scale} pixels)")
    img = img.crop(box)
    if sw < 0:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return img


#: Integer pixels whose value range is narrower than this are windowed through a lookup table (16-bit and below).
_LUT_MAX = 1 << 17


def _gray_8bit(stored: np.ndarray, meta: dict[str, Any], params: RenderParams, photometric: str) -> np.ndarray:
    """Stored values -> modality values (rescale) -> VOI window (the request's, the instance's, or the data's range)
    -> 8 bits, inverted for MONOCHROME1. ``stored`` is the frame, or every value between its minimum and maximum."""
    slope = _first_number(meta, "00281053") or 1.0
    intercept = _first_number(meta, "00281052") or 0.0
    data = stored * slope + intercept
    if params.window is not None:
        c, w, fn = params.window
    else:
        c0, w0 = _first_number(meta, "00281050"), _first_number(meta, "00281051")
        if c0 is not None and w0 is not None and w0 > 0:
            c, w, fn = c0, max(w0, 1.0), (_string(meta, "00281056") or "LINEAR").lower()
        else:
            lo, hi = float(data.min()), float(data.max())
            c, w, fn = (lo + hi) / 2, max(hi - lo, 1.0), "linear-exact"
    out = _window(data, c, w, fn)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _window(data: np.ndarray, c: float, w: float, fn: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 VOI LUT functions, to [0, 1]."""
    if fn == "linear-exact":
        return np.clip((data - (c - w / 2)) / w, 0.0, 1.0)
    if fn == "sigmoid":
        return 1.0 / (1.0 + np.exp(-4.0 * (data - c) / w))
    return np.clip((data - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def _scale_to_8bit(px: np.ndarray) -> np.ndarray:
    lo, hi = float(px.min()), float(px.max())
    return np.clip((px.astype(np.float64) - lo) * 255.0 / max(hi - lo, 1.0), 0, 255).astype(np.uint8)
