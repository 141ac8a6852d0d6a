"""Triage feeds the model exactly what training fed it: same function, same stored objects, identical arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.triage.domain.inputs import load_frame, model_input
from shared import htj2k
from shared.preprocessing import params_from_dataset, preprocess
from training.preprocess import frame_to_input
from training.synthetic import generate_case


@pytest.mark.parametrize(("index", "size"), [(0, 224), (5, 64)])
def test_triage_input_is_bit_identical_to_training_input(index: int, size: int) -> None:
    ds, _, _ = generate_case(index, seed=3, size=256)
    meta = ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda el: "")
    meta.pop("7FE00010", None)
    codestream = htj2k.encode(ds.pixel_array)  # what ingestion stores as frame 1
    metadata = json.dumps(meta).encode()  # and the DICOM JSON next to it

    serving = model_input(load_frame(codestream, metadata), size)
    training = frame_to_input(codestream, json.loads(metadata), size)
    from_dicom = preprocess(ds.pixel_array, params_from_dataset(ds), size=size)

    assert serving.dtype == np.float32 and serving.shape == (size, size)
    assert np.array_equal(serving, training), "triage and training preprocessing differ"
    assert np.array_equal(serving, from_dicom), "the stored frame and metadata do not reproduce the DICOM input"


def test_undecodable_frame_is_reported_not_scored() -> None:
    with pytest.raises(ValueError, match="could not be decoded"):
        load_frame(b"\xff\x4fnot a codestream", b"{}")
