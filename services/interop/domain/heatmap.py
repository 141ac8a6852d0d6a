"""The Grad-CAM map back from triage's overlay PNG.

Triage stores each heatmap as an RGBA PNG the size of the frame whose alpha is ``round(map * 0.6 * 255)`` (jet
colours, opacity proportional to the normalised Grad-CAM map; ``services/triage/domain/gradcam.py``,
``overlay_png``). The alpha channel is therefore the map quantised to 154 levels, which is what the Segmentation
stores (0..255 fractional values). If triage's ``max_alpha`` changes, :data:`OVERLAY_MAX_ALPHA` must follow.
"""

from __future__ import annotations

import imagecodecs
import numpy as np

#: Opacity of a map value of 1.0 in triage's overlay.
OVERLAY_MAX_ALPHA = 0.6


class HeatmapError(ValueError):
    """The stored heatmap is not the overlay PNG this module expects."""


def map_from_overlay(png: bytes) -> np.ndarray:
    """The normalised map (float32, 0..1, rows x columns) from an overlay PNG."""
    try:
        rgba = np.asarray(imagecodecs.png_decode(png))
    except Exception as exc:
        raise HeatmapError(f"The heatmap is not a PNG image ({type(exc).__name__}).") from None
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise HeatmapError(f"The heatmap PNG has shape {rgba.shape} and type {rgba.dtype}; expected 8-bit RGBA.")
    return np.clip(rgba[..., 3].astype(np.float32) / (OVERLAY_MAX_ALPHA * 255.0), 0.0, 1.0)
