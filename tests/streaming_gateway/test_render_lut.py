"""Rendering integer frames through a lookup table gives exactly the bytes of windowing every pixel in floating
point (services/streaming_gateway/domain/render.py): CT with rescale, MONOCHROME1, every VOI function, no VOI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from services.streaming_gateway.domain import render
from shared import htj2k


def _meta(**tags: object) -> dict[str, object]:
    codes = {"slope": "00281053", "intercept": "00281052", "center": "00281050", "width": "00281051",
             "function": "00281056", "photometric": "00280004"}
    return {codes[k]: {"vr": "DS", "Value": [v]} for k, v in tags.items()}


CASES = [
    ("ct", np.int16, (-1024, 2000), _meta(slope=1, intercept=-1024, center=40, width=400), None),
    ("ct-sigmoid", np.uint16, (0, 4095), _meta(slope=1, intercept=-1024, center=40, width=400,
                                               function="SIGMOID"), None),
    ("cr-mono1", np.uint16, (0, 16383), _meta(photometric="MONOCHROME1"), None),
    ("no-voi", np.uint16, (100, 900), {}, None),
    ("request-window", np.uint16, (0, 65535), _meta(slope=0.5, intercept=10), (300.0, 600.0, "linear-exact")),
    ("8-bit", np.uint8, (0, 255), {}, (128.0, 64.0, "linear")),
]


@pytest.mark.parametrize(("name", "dtype", "span", "meta", "window"), CASES, ids=[c[0] for c in CASES])
def test_lookup_table_equals_per_pixel_windowing(name: str, dtype: type, span: tuple[int, int],
                                                 meta: dict[str, object], window: tuple[float, float, str] | None
                                                 ) -> None:
    rng = np.random.default_rng(len(name))
    px = rng.integers(span[0], span[1] + 1, size=(96, 80)).astype(dtype)
    px[0, 0], px[0, 1] = span  # both ends present
    params = render.RenderParams("image/png", window, None, 90)
    photometric = str(meta.get("00280004", {}).get("Value", ["MONOCHROME2"])[0])  # type: ignore[union-attr]
    got = np.asarray(Image.open(io.BytesIO(render.render(htj2k.encode(px), json.dumps(meta), None, params))))
    expected = render._gray_8bit(px.astype(np.float64), meta, params, photometric)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert len(np.unique(got)) > 2, "the case should exercise the window, not saturate"
