"""Grad-CAM heatmaps: a valid PNG the size of the image, peaking on the generator's lesion mask."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from services.triage.domain.gradcam import grad_cam, overlay_png
from services.triage.domain.inputs import load_frame, model_input
from services.triage.domain.model import load_model_artifact
from shared import htj2k
from tests.support.triage_data import make_case, trained_model_tar


@pytest.fixture(scope="module")
def model():
    data, metrics = trained_model_tar()
    assert metrics["auc"] >= 0.9, f"the test model did not learn the synthetic task: {metrics}"
    return load_model_artifact(data, version=1, threshold=0.5, precision="fp32")


def _heat(model, index: int):  # type: ignore[no-untyped-def]
    case = make_case(index, seed=99, size=128, positive=True)  # a cohort the model never saw
    frame = load_frame(htj2k.encode(case.pixels), case.meta)
    x = model_input(frame, model.input_size)
    prob = float(model.predict(x[None])[0])
    cam, layer = grad_cam(model.module, x, min_size=7)
    png = overlay_png(cam, frame.rows, frame.columns)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rgba = imagecodecs.png_decode(png)
    assert rgba.shape == (case.pixels.shape[0], case.pixels.shape[1], 4), "the overlay must be the image's size"
    return case, prob, rgba[..., 3].astype(np.float64), layer


def test_heatmaps_of_positives_concentrate_on_the_lesion(model) -> None:
    """Over eight unseen positives, the heat sits on the generator's lesion mask.

    Grad-CAM of a small model at an 8x8 feature map is coarse, and one image's argmax can land on a bright rib
    next to the consolidation, so the bar is set over a set of cases rather than on one image's peak: most
    positives must hold clearly more heat inside the lesion than away from it (1.2x), the set on average at least
    twice as much, and half of them must peak on it (the mask dilated by half a feature cell). A uniform, random or
    inverted map fails all three. (A per-image 2x bar depended on the CPU the test model was trained on: the same
    seed gave 4/8 on one machine of this kind and passed on another.)
    """
    from scipy import ndimage

    called, concentrated, peaked, ratios = 0, 0, 0, []
    for index in (3, 5, 7, 40, 41, 42, 43, 44):
        case, prob, alpha, layer = _heat(model, index)
        if prob < model.threshold:
            continue
        called += 1
        cell = case.pixels.shape[0] // 8
        near = ndimage.binary_dilation(case.mask, iterations=cell // 2)
        peak = np.unravel_index(int(np.argmax(alpha)), alpha.shape)
        peaked += bool(near[peak])
        ratio = alpha[case.mask].mean() / max(alpha[~near].mean(), 1e-9)
        ratios.append(ratio)
        concentrated += bool(ratio > 1.2)
    assert called >= 6, f"the model should call most synthetic consolidations positive ({called}/8)"
    assert concentrated >= 0.75 * called, f"heat concentrated on the lesion in only {concentrated}/{called} positives"
    assert float(np.mean(ratios)) >= 2.0, f"heat inside the lesions vs away from them: {np.round(ratios, 2)}"
    assert peaked >= 0.5 * called, f"the heatmap peaked on the lesion in only {peaked}/{called} positives"


def test_concurrent_heatmaps_on_one_model_match_serial_ones(model) -> None:
    """Triage computes heatmaps in worker threads on the one champion: concurrent calls must not mix their hooks."""
    from concurrent.futures import ThreadPoolExecutor

    xs = []
    for index in (3, 40, 41, 42, 43, 44):
        case = make_case(index, seed=99, size=128, positive=True)
        xs.append(model_input(load_frame(htj2k.encode(case.pixels), case.meta), model.input_size))
    serial = [grad_cam(model.module, x, min_size=7)[0] for x in xs]
    with ThreadPoolExecutor(6) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda x: grad_cam(model.module, x, min_size=7)[0], xs))
            for a, b in zip(serial, parallel, strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5)
