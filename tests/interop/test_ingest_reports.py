"""Ingestion stores structured reports (no Pixel Data) and still refuses other objects without pixels."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from services.ingestion.domain.prepare import PrepareOptions, prepare
from services.interop.domain import builders as b
from shared.dicom.errors import DicomRejection
from shared.dicom.parse import ParseLimits
from training.synthetic import generate_case

OPTS = PrepareOptions(limits=ParseLimits(max_bytes=64 << 20, max_inflated_bytes=64 << 20, max_pixel_bytes=1 << 30),
                      pseudonym_key="k", source="s3")


def test_a_comprehensive_3d_sr_is_prepared_without_frames() -> None:
    src, _, _ = generate_case(3, 11, size=64, prevalence=0.5, difficulty=0.0)
    sr = b.build_ai_sr(src, b.Score(0.6, 0.5, datetime(2026, 1, 1, tzinfo=UTC)), b.Algorithm("radloop", "1", 2))
    prep = prepare(b.to_bytes(sr), OPTS)
    assert prep.frames == [] and prep.modality == "SR"
    assert prep.record.instance["number_of_frames"] == 0 and prep.record.instance["bits_allocated"] is None
    assert prep.event_fields["rows"] == 0 and prep.study_uid == str(src.StudyInstanceUID)


def test_an_image_without_pixel_data_is_still_refused() -> None:
    src, _, _ = generate_case(4, 11, size=64, prevalence=0.5, difficulty=0.0)
    del src.PixelData
    buf = io.BytesIO()
    src.save_as(buf, enforce_file_format=True)
    with pytest.raises(DicomRejection, match="Pixel Data"):
        prepare(buf.getvalue(), OPTS)


def test_storescu_sends_an_sr_to_the_ingestion_scp(platform, tmp_path) -> None:
    """A PACS pushing an AI result by C-STORE (DCMTK storescu): ingestion's SCP accepts the SR class and stores it."""
    import subprocess

    from tests.interop.conftest import wait_until

    src, _, _ = generate_case(5, 11, size=64, prevalence=0.5, difficulty=0.0)
    sr = b.build_ai_sr(src, b.Score(0.3, 0.5, datetime(2026, 1, 3, tzinfo=UTC)), b.Algorithm("other vendor", "2", 1))
    path = tmp_path / "sr.dcm"
    path.write_bytes(b.to_bytes(sr))
    r = subprocess.run(["storescu", "-R", "-aet", "STORESCU", "-aec", "RADLOOP", "127.0.0.1",
                        str(platform.ingestion_dimse_port), str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    item = wait_until(lambda: platform.dep.instance(str(sr.StudyInstanceUID), str(sr.SeriesInstanceUID),
                                                    str(sr.SOPInstanceUID)), 30, "the SR to be indexed")
    assert item["source"] == "dimse" and item["number_of_frames"] == 0
