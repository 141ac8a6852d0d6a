"""From stored objects to the model input, with exactly the preprocessing training uses (no torch here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared import htj2k
from shared.drift import site_key
from shared.preprocessing import FrameParams, params_from_dicom_json, preprocess


@dataclass(frozen=True)
class Frame:
    """One decoded frame with what preprocessing needs to know about it."""

    pixels: np.ndarray
    params: FrameParams
    #: the acquiring site and device, pseudonymised (shared.drift.site_key): drift is watched per site
    site: str

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])


def load_frame(codestream: bytes, metadata_json: bytes | str | dict[str, Any], site_secret: str = "") -> Frame:
    """Decode an HTJ2K frame and read its preprocessing parameters from the instance's DICOM JSON; ``site_secret``
    keys the pseudonymous site key (:func:`shared.drift.site_key`; the deployment's pseudonym key).

    Raises ValueError with the reason when the codestream or the metadata cannot be read.
    """
    try:
        pixels = htj2k.decode(codestream)
    except Exception as exc:
        raise ValueError(f"frame codestream ({len(codestream)} bytes) could not be decoded as HTJ2K: {exc}") from None
    meta = metadata_json if isinstance(metadata_json, dict) else json.loads(metadata_json)
    if not isinstance(meta, dict):
        raise ValueError(f"instance metadata is a JSON {type(meta).__name__}, expected a DICOM JSON object")
    return Frame(pixels=pixels, params=params_from_dicom_json(meta), site=site_key(meta, site_secret))


def model_input(frame: Frame, size: int) -> np.ndarray:
    """The model input for one frame: :func:`shared.preprocessing.preprocess`, the function training uses."""
    return preprocess(frame.pixels, frame.params, size=size)
