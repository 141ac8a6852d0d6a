"""The DICOM result objects: built by highdicom (which validates while building), read back by pydicom, parsed by
DCMTK's dsrdump without errors (those tests are in the integration tier: they start a process), deterministic, and
refusing bad inputs with a sentence."""

from __future__ import annotations

import io
import subprocess
from datetime import UTC, datetime

import numpy as np
import pydicom
import pytest

from services.interop.domain import builders as b
from services.interop.domain.heatmap import map_from_overlay
from training.synthetic import generate_case

AT = datetime(2026, 12, 4, 10, 11, 12, tzinfo=UTC)
ALGO = b.Algorithm("radloop pneumonia triage", "0.1.0", 3)


@pytest.fixture(scope="module")
def source() -> pydicom.Dataset:
    ds, _label, _mask = generate_case(0, 11, size=96, prevalence=0.5, difficulty=0.0)
    return ds


def _content(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    """(concept meaning, value) of every content item, depth first."""
    out: list[tuple[str, str]] = []

    def walk(items: pydicom.Sequence) -> None:
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if "ConceptCodeSequence" in it:
                out.append((name, it.ConceptCodeSequence[0].CodeMeaning))
            elif "MeasuredValueSequence" in it:
                out.append((name, str(it.MeasuredValueSequence[0].NumericValue)))
            elif "TextValue" in it:
                out.append((name, str(it.TextValue)))
            elif "PersonName" in it:
                out.append((name, str(it.PersonName)))
            elif "ReferencedSOPSequence" in it:
                out.append((name, str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)))
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return out


def _dsrdump(tmp_path, data: bytes) -> str:
    p = tmp_path / "sr.dcm"
    p.write_bytes(data)
    r = subprocess.run(["dsrdump", "-Ee", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "E:" not in r.stderr and "error" not in r.stderr.lower(), r.stderr
    return r.stdout


@pytest.mark.integration  # runs DCMTK's dsrdump
@pytest.mark.parametrize(("probability", "finding"), [(0.83, "Present"), (0.2, "Absent")])
def test_ai_sr_reads_back_and_dsrdump_parses_it(source, tmp_path, probability: float, finding: str) -> None:
    data = b.to_bytes(b.build_ai_sr(source, b.Score(probability, 0.5, AT), ALGO))
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.Modality == "SR"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = _content(ds)
    assert ("Pneumonia", finding) in items
    assert ("Probability", f"{probability:g}") in items
    assert ("Algorithm Name", "radloop pneumonia triage") in items
    assert ("Algorithm Version", "0.1.0+model.3") in items
    assert ("Algorithm Parameters", "model_version=3") in items
    assert ("Source of Measurement", str(source.SOPInstanceUID)) in items
    assert ds.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == source.StudyInstanceUID
    text = _dsrdump(tmp_path, data)
    assert "Comprehensive 3D SR" in text and f'"{finding}"' in text


def test_results_are_deterministic_per_source_and_version(source) -> None:
    def sr(version: int, p: float = 0.7) -> bytes:
        return b.to_bytes(b.build_ai_sr(source, b.Score(p, 0.5, AT), b.Algorithm(ALGO.name, ALGO.version, version)))

    assert sr(3) == sr(3)
    other = pydicom.dcmread(io.BytesIO(sr(4)))
    assert other.SOPInstanceUID != pydicom.dcmread(io.BytesIO(sr(3))).SOPInstanceUID
    assert other.SOPInstanceUID == b.sop_uid(str(source.SOPInstanceUID), "ai-sr", 4)
    hm = np.linspace(0, 1, source.Rows * source.Columns, dtype=np.float32).reshape(source.Rows, source.Columns)
    assert b.to_bytes(b.build_heatmap_seg(source, hm, ALGO, AT)) == b.to_bytes(b.build_heatmap_seg(source, hm, ALGO, AT))


def test_heatmap_segmentation_holds_the_probability_map(source) -> None:
    from services.triage.domain.gradcam import overlay_png  # the producer of the stored heatmap

    rows, cols = int(source.Rows), int(source.Columns)
    cam = np.zeros((12, 12), dtype=np.float32)
    cam[3:8, 4:9] = 1.0
    png = overlay_png(cam, rows, cols)
    hm = map_from_overlay(png)
    assert hm.shape == (rows, cols) and hm.max() == pytest.approx(1.0) and hm.min() == 0.0
    seg = pydicom.dcmread(io.BytesIO(b.to_bytes(b.build_heatmap_seg(source, hm, ALGO, AT))))
    assert seg.Modality == "SEG" and seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY" and seg.MaximumFractionalValue == 255
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID
    px = seg.pixel_array.astype(np.float32) / 255.0
    assert px.shape == (rows, cols)
    assert np.abs(px - hm).max() <= 1 / 255 + 1e-6
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmName == ALGO.name and alg.AlgorithmVersion == "0.1.0+model.3"


@pytest.mark.integration  # runs DCMTK's dsrdump
def test_verified_read_sr_has_a_pseudonymous_observer(source, tmp_path) -> None:
    read = b.VerifiedRead("normal", 2, "adjudicated", "3f2a9c0d11e4b7aa", AT)
    data = b.to_bytes(b.build_verified_sr(source, read))
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.VerificationFlag == "VERIFIED" and ds.CompletionFlag == "COMPLETE"
    assert ds.PreliminaryFlag == "FINAL"
    items = _content(ds)
    assert ("Observer Type", "Person") in items
    assert ("Person Observer Name", "READER^3f2a9c0d11e4b7aa") in items
    assert ("Person Observer's Role in the Organization", "Radiologist") in items
    assert ("Pneumonia", "Absent") in items
    names = {str(x) for x in [ds.VerifyingObserverSequence[0].VerifyingObserverName]}
    assert names == {"READER^3f2a9c0d11e4b7aa"}
    # the series of reads is one per study, the instance one per label version
    assert ds.SeriesInstanceUID == b.series_uid(str(source.StudyInstanceUID), "read-sr", 7)
    _dsrdump(tmp_path, data)


@pytest.mark.integration  # runs DCMTK's dsrdump
def test_an_amended_read_names_the_report_it_replaces_and_results_carry_their_time_zone(source, tmp_path) -> None:
    """Found by a review (session 22): an amended read was a second final, verified report with no link to the first,
    so a PACS showed two that disagree; and result times are UTC with no Timezone Offset From UTC, so a DICOM reader
    took them as local time."""
    first = pydicom.dcmread(io.BytesIO(b.to_bytes(b.build_verified_sr(
        source, b.VerifiedRead("pneumonia", 1, "single", "3f2a9c0d11e4b7aa", AT)))))
    data = b.to_bytes(b.build_verified_sr(source, b.VerifiedRead("normal", 2, "amended", "3f2a9c0d11e4b7aa", AT)))
    amended = pydicom.dcmread(io.BytesIO(data))
    assert "PredecessorDocumentsSequence" not in first
    (item,) = amended.PredecessorDocumentsSequence
    assert item.StudyInstanceUID == first.StudyInstanceUID
    (series,) = item.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence] == [
        (first.SOPClassUID, first.SOPInstanceUID)]
    _dsrdump(tmp_path, data)
    ai = pydicom.dcmread(io.BytesIO(b.to_bytes(b.build_ai_sr(source, b.Score(0.8, 0.5, AT),
                                                             b.Algorithm("r", "1", 1)))))
    assert first.TimezoneOffsetFromUTC == amended.TimezoneOffsetFromUTC == ai.TimezoneOffsetFromUTC == "+0000"


def test_bad_inputs_are_refused_with_a_sentence(source) -> None:
    with pytest.raises(b.ResultBuildError, match="between 0 and 1"):
        b.build_ai_sr(source, b.Score(1.5, 0.5, AT), ALGO)
    with pytest.raises(b.ResultBuildError, match="does not match|must match"):
        b.build_heatmap_seg(source, np.zeros((5, 5), np.float32), ALGO, AT)
    with pytest.raises(b.ResultBuildError, match="pseudonym"):
        b.build_verified_sr(source, b.VerifiedRead("normal", 1, "single", "Dr Real Name", AT))
    with pytest.raises(b.ResultBuildError, match="label"):
        b.build_verified_sr(source, b.VerifiedRead("maybe", 1, "single", "abc", AT))


@pytest.mark.parametrize("missing", ["PatientBirthDate", "PatientSex", "PatientName", "PatientID", "StudyDate",
                                     "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"])
def test_results_build_for_a_source_without_optional_patient_and_study_attributes(source, missing: str) -> None:
    """Ingestion accepts images whose type 2 patient/study attributes are absent (found by the chaos run: interop
    raised AttributeError on an image without PatientBirthDate, and the event would have ended in its DLQ)."""
    bare = pydicom.Dataset()
    bare.update(source)
    bare.file_meta = source.file_meta
    if missing in bare:
        del bare[missing]
    sr = pydicom.dcmread(io.BytesIO(b.to_bytes(b.build_ai_sr(bare, b.Score(0.7, 0.5, AT), ALGO))))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert missing in sr and not sr[missing].value  # present, empty: type 2 in the SR's patient/study modules
    read = b.VerifiedRead("normal", 1, "single", "3f2a9c0d11e4b7aa", AT)
    assert pydicom.dcmread(io.BytesIO(b.to_bytes(b.build_verified_sr(bare, read)))).SOPInstanceUID
    heat = np.zeros((int(source.Rows), int(source.Columns)), dtype=np.float32)
    assert pydicom.dcmread(io.BytesIO(b.to_bytes(b.build_heatmap_seg(bare, heat, ALGO, AT)))).SOPInstanceUID
