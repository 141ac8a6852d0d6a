"""Training's view of a frame equals serving's: stored HTJ2K + DICOM JSON vs the DICOM dataset, and shard storage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared import htj2k
from shared.preprocessing import params_from_dataset, preprocess
from training.preprocess import SCALE, frame_to_input, load_shards, read_manifest, write_shard
from training.synthetic import case_spec, render, to_dataset


@pytest.mark.parametrize("index", [0, 3])
def test_stored_frame_gives_the_same_input_as_the_dataset(index: int, tmp_path) -> None:
    rd = render(case_spec(index, seed=4, size=128, prevalence=0.5))
    ds = to_dataset(rd)
    meta = ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _el: "")
    meta.pop("7FE00010", None)
    meta = json.loads(json.dumps(meta))  # as stored in S3
    served = preprocess(ds.pixel_array, params_from_dataset(ds), size=64)
    trained = frame_to_input(htj2k.encode(rd.pixels), meta, 64)
    assert trained.dtype == np.float32 and np.array_equal(trained, served)
    write_shard(tmp_path, trained[None], [rd.spec.label], [rd.spec.sop_uid], ["p"])
    back = load_shards(tmp_path)
    assert np.abs(back["x"][0] - trained).max() <= 0.5 / SCALE + 1e-7
    assert back["ids"][0] == rd.spec.sop_uid and back["y"][0] == rd.spec.label


def test_manifest_is_read_with_its_hash(tmp_path) -> None:
    from shared import datasets

    rec = datasets.ManifestRecord(sop_uid="1.2.3", study_uid="1.2", series_uid="1.2.4", bucket="b",
                                  frame_key="frames/1.2/1.2.4/1.2.3/1.jph", metadata_key="metadata/1.2/1.2.4/1.2.3.json",
                                  label="pneumonia", target=1, label_version=1, reader="r", patient_pseudo_id="p",
                                  split="train")
    body = datasets.serialize([rec])
    (tmp_path / "manifest.json").write_bytes(body)
    records, sha = read_manifest(tmp_path)
    assert records == [rec] and sha == datasets.sha256(body)
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "empty")
