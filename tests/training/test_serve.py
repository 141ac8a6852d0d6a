"""The training image's inference entry point (``training/serve.py``): SageMaker's container contract over a real HTTP
server on loopback, and the promise that a batch transform scores an original DICOM object exactly as triage scores
the stored HTJ2K frame of the same instance (the same model input, bit for bit)."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.triage.domain.inputs import load_frame, model_input
from shared import htj2k
from tests.support.triage_data import make_case, trained_model_tar
from tests.triage.test_rescore_transform import original_p10
from training.serve import Scorer, ScoringError, read_manifest, serve


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    data, _ = trained_model_tar()
    path = tmp_path_factory.mktemp("model") / "model.tar.gz"
    path.write_bytes(data)
    return Scorer.load(path)


@pytest.fixture(scope="module")
def base_url(scorer: Scorer) -> Iterator[str]:
    server = serve(scorer, "127.0.0.1", 0, max_payload_mb=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_model_input_from_the_original_is_triages_from_the_stored_frame(scorer: Scorer) -> None:
    for i in range(3):
        case = make_case(i, 5, size=128, uid_salt="serve")
        sop, x = scorer.model_input(original_p10(case))
        assert sop == case.sop_uid
        triage_x = model_input(load_frame(htj2k.encode(case.pixels), case.meta), scorer.input_size)
        np.testing.assert_array_equal(x, triage_x)


def test_sagemaker_contract(scorer: Scorer, base_url: str) -> None:
    case = make_case(1, 5, size=128, uid_salt="serve-http")
    with httpx.Client(base_url=base_url, timeout=30) as http:
        ping = http.get("/ping")
        assert ping.status_code == 200 and ping.json()["input_size"] == scorer.input_size
        assert http.get("/execution-parameters").json()["BatchStrategy"] == "SingleRecord"
        ok = http.post("/invocations", content=original_p10(case), headers={"Content-Type": "application/dicom"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == scorer.score(original_p10(case))
        assert ok.json()["sop_instance_uid"] == case.sop_uid and 0.0 <= ok.json()["probability"] <= 1.0

        bad = http.post("/invocations", content=b"not dicom at all", headers={"Content-Type": "application/dicom"})
        assert bad.status_code == 400 and "not a DICOM P10 object" in bad.json()["error"]
        wrong = http.post("/invocations", content=b"{}", headers={"Content-Type": "application/json"})
        assert wrong.status_code == 415 and "application/dicom" in wrong.json()["error"]
        big = http.post("/invocations", content=b"\0" * (2 * 1024 * 1024),
                        headers={"Content-Type": "application/dicom"})
        assert big.status_code == 413 and "1 MB" in big.json()["error"]
    with httpx.Client(base_url=base_url, timeout=30) as http:  # a fresh connection after the refused body
        assert http.get("/nope").status_code == 404
        assert http.get("/ping").status_code == 200


def test_an_object_without_pixels_is_refused_with_its_reason(scorer: Scorer) -> None:
    from pydicom import dcmread

    case = make_case(2, 5, size=128, uid_salt="serve-nopixels")
    ds = dcmread(io.BytesIO(original_p10(case)))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ScoringError, match="has no pixel data"):
        scorer.score(buf.getvalue())


def test_manifests_are_read_as_sagemaker_writes_them() -> None:
    assert read_manifest([{"prefix": "s3://b/p/"}, "x/1.dcm", "2.dcm"]) == ("b", "p/", ["x/1.dcm", "2.dcm"])
    for bad in ([], ["a"], [{"prefix": "http://b/"}, "k"], [{"prefix": "s3://b/"}, ""], {"prefix": "s3://b/"}):
        with pytest.raises(ValueError):
            read_manifest(bad)


def test_the_dockerfile_gives_sagemaker_a_serve_command() -> None:
    text = (Path(__file__).resolve().parents[2] / "training" / "Dockerfile").read_text()
    assert "/usr/local/bin/serve" in text and "training.serve serve" in text
    # the artefact layout the server loads is the training contract's
    data, _ = trained_model_tar()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"weights.pt", "config.json"} <= names
