"""Grad-CAM heatmaps: a valid PNG the size of the image, peaking on the generator's lesion mask."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from services.triage.domain.gradcam import grad_cam, overlay_png
from services.triage.domain.inputs import load_frame, model_input
from services.triage.domain.model import ChampionRecord, load_model_artifact
from shared import htj2k
from tests.support.triage_data import make_case, trained_model_tar


@pytest.fixture(scope="module")
def model():
    data, metrics = trained_model_tar()
    assert metrics["auc"] >= 0.9, f"the test model did not learn the synthetic task: {metrics}"
    return load_model_artifact(data, ChampionRecord(1, "s3://b/k", 0.5), precision="fp32")


@pytest.mark.parametrize("index", [3, 40])
def test_heatmap_of_a_positive_peaks_inside_the_lesion(model, index: int) -> None:
    case = make_case(index, seed=99, size=128, positive=True)  # a cohort the model never saw
    frame = load_frame(htj2k.encode(case.pixels), case.meta)
    x = model_input(frame, model.input_size)
    prob = float(model.predict(x[None])[0])
    assert prob >= model.threshold, f"the model should call this synthetic consolidation positive (p={prob:.3f})"

    cam, layer = grad_cam(model.module, x, min_size=7)
    png = overlay_png(cam, frame.rows, frame.columns)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rgba = imagecodecs.png_decode(png)
    assert rgba.shape == (case.pixels.shape[0], case.pixels.shape[1], 4), "the overlay must be the image's size"
    alpha = rgba[..., 3].astype(np.float64)

    mask = case.mask
    peak = np.unravel_index(int(np.argmax(alpha)), alpha.shape)
    # the peak lies on the lesion (allowing the CAM's one-cell resolution: the mask dilated by one feature cell)
    from scipy import ndimage

    cell = case.pixels.shape[0] // 8
    near = ndimage.binary_dilation(mask, iterations=cell // 2)
    assert near[peak], f"heatmap peak {peak} ({layer}) is not on the lesion"
    inside, outside = alpha[mask].mean(), alpha[~near].mean()
    assert inside > 2.0 * outside, f"mean heat inside the lesion {inside:.1f} vs outside {outside:.1f}: no clear margin"


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
