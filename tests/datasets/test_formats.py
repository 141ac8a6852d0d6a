"""Each dataset's published layout read into items and labels (no services: the unit tier).

The label policies (``--uncertain``, ``--other``, ``--views``, ``--split``), the wrapper's DICOM (PHI where DICOM keeps
it, deterministic bytes, accepted by ingestion's strict parser and de-identified by its profile) and the pure
transition that records an imported label in verification.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest

from radloop.datasets.formats import DatasetError, list_dataset
from radloop.datasets.importer import payload
from radloop.datasets.wrap import SC_SOP_CLASS, secondary_capture
from services.verification.domain.cases import ReadRejected, apply_read, apply_stored
from services.verification.domain.imported import apply_imported
from shared.dicom.deid import burned_in_annotation_reason, deidentify
from shared.dicom.parse import ParseLimits, parse_safely
from shared.events import InstanceStored
from tests.datasets.layouts import CHEXPERT_ROWS, make_chestxray14, make_chexpert, make_rsna


def labels(fmt: str, root: Path, **kw: str) -> dict[str, str]:
    return {i.key: i.label for i in list_dataset(fmt, root, **kw).items}  # type: ignore[arg-type]


def test_rsna_target_and_detailed_class(tmp_path: Path) -> None:
    expected = make_rsna(tmp_path)
    listing = list_dataset("rsna-pneumonia", tmp_path)
    by_sop = {pydicom.dcmread(i.path, stop_before_pixels=True).SOPInstanceUID: i.label for i in listing.items}
    assert by_sop == expected
    assert sorted(expected.values()) == ["normal", "normal", "pneumonia", "pneumonia"]
    assert listing.excluded == {"image file missing": 1}
    # "No Lung Opacity / Not Normal" is pneumonia-negative by default, left out with --other skip
    assert len(list_dataset("rsna-pneumonia", tmp_path, other="skip").items) == 3


def test_rsna_labels_that_disagree_are_left_out(tmp_path: Path) -> None:
    make_rsna(tmp_path)
    info = tmp_path / "stage_2_detailed_class_info.csv"
    lines = info.read_text().splitlines()
    pid = lines[1].split(",")[0]  # a Target 0 patient now said to have "Lung Opacity"
    info.write_text("\n".join([lines[0], f"{pid},Lung Opacity", *lines[2:]]) + "\n")
    listing = list_dataset("rsna-pneumonia", tmp_path)
    assert listing.excluded["labels disagree (Target 0, class Lung Opacity)"] == 1 and len(listing.items) == 3


@pytest.mark.parametrize("release", ["2017", "v2020"])
def test_chestxray14_multi_labels_and_no_finding(tmp_path: Path, release: str) -> None:
    expected = make_chestxray14(tmp_path, release=release)
    assert labels("chestxray14", tmp_path) == expected
    # "Infiltration|Pneumonia" is pneumonia; "Cardiomegaly|Emphysema" is another finding: left out with --other skip
    skipped = labels("chestxray14", tmp_path, other="skip")
    assert set(skipped) == {k for k in expected if "00000001" not in k}
    items = {i.key: i for i in list_dataset("chestxray14", tmp_path).items}
    p = items["images_001/images/00000001_001.png"].patient
    assert (p.patient_id, p.age, p.sex, p.view, p.study) == ("00000001", "058Y", "M", "PA", "1")


def test_chexpert_uncertainty_policies_views_and_splits(tmp_path: Path) -> None:
    expected = make_chexpert(tmp_path)
    default = labels("chexpert", tmp_path)
    assert default == {k: v for k, v in expected.items() if v is not None}
    uncertain_key = "train/patient00002/study2/view1_frontal.jpg"
    assert labels("chexpert", tmp_path, uncertain="ones")[uncertain_key] == "pneumonia"
    assert labels("chexpert", tmp_path, uncertain="zeros")[uncertain_key] == "normal"
    assert "train/patient00002/study1/view2_lateral.jpg" in labels("chexpert", tmp_path, views="all")
    # blank Pneumonia with another finding (Lung Opacity 1.0) and no "No Finding": the --other policy
    assert "train/patient00004/study1/view1_frontal.jpg" not in labels("chexpert", tmp_path, other="skip")
    assert set(labels("chexpert", tmp_path, split="valid")) == {
        f"valid/{r[1]}/{r[2]}/{r[3]}.jpg" for r in CHEXPERT_ROWS if r[0] == "valid"}
    # the folder itself or its parent
    assert labels("chexpert", tmp_path / "CheXpert-v1.0-small") == default


def test_a_folder_in_another_layout_is_refused_with_a_sentence(tmp_path: Path) -> None:
    make_chestxray14(tmp_path)
    with pytest.raises(DatasetError, match="stage_2_train_labels.csv"):
        list_dataset("rsna-pneumonia", tmp_path)
    with pytest.raises(DatasetError, match="train.csv"):
        list_dataset("chexpert", tmp_path)
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Labels\nx.png,Pneumonia\n")
    with pytest.raises(DatasetError, match="'Finding Labels'"):
        list_dataset("chestxray14", tmp_path)


def test_wrapped_instance_puts_phi_where_dicom_keeps_it_and_is_deterministic(tmp_path: Path) -> None:
    make_chestxray14(tmp_path)
    items = list_dataset("chestxray14", tmp_path).items
    for item in items:  # the RGBA one included
        data = secondary_capture(item, "chestxray14")
        assert data == secondary_capture(item, "chestxray14")
        parsed = parse_safely(data, ParseLimits())  # ingestion's strict parser accepts it
        ds = parsed.dataset
        assert ds.SOPClassUID == SC_SOP_CLASS and ds.Modality == "CR" and ds.BodyPartExamined == "CHEST"
        assert (ds.PatientID, ds.PatientAge, ds.PatientSex) == (item.patient.patient_id, item.patient.age,
                                                                item.patient.sex)
        assert ds.pixel_array.shape == (96, 96)
        # ingestion's de-identification profile removes them and does not quarantine the image
        assert burned_in_annotation_reason(ds) is None
        deidentify(ds, key="k")
        assert ds.PatientID != item.patient.patient_id and str(ds.get("PatientAge", "")) != item.patient.age
    # two follow-ups of one patient: two studies; the UIDs differ per image
    uids = [pydicom.dcmread(io.BytesIO(secondary_capture(i, "chestxray14"))) for i in items[:2]]
    assert uids[0].StudyInstanceUID != uids[1].StudyInstanceUID and uids[0].SOPInstanceUID != uids[1].SOPInstanceUID


def test_rsna_files_are_sent_exactly_as_published(tmp_path: Path) -> None:
    make_rsna(tmp_path)
    for item in list_dataset("rsna-pneumonia", tmp_path).items:
        raw = item.path.read_bytes()
        assert payload(item, "rsna-pneumonia") == raw
        ds = parse_safely(raw, ParseLimits()).dataset  # SC, JPEG Baseline, PatientAge "51": ingestion accepts it
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50" and ds.pixel_array.shape == (96, 96)


def _case(mode: str = "single") -> dict:
    e = InstanceStored(study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5", sop_class_uid=SC_SOP_CLASS,
                       modality="CR", body_part="CHEST", number_of_frames=1, rows=8, columns=8, original_key="o",
                       frames_prefix="f", metadata_key="m", content_sha256="a" * 64, size_bytes=1, htj2k_bytes=1,
                       patient_pseudo_id="p", source="stow")
    return apply_stored(None, e, mode=mode)


@pytest.mark.parametrize("mode", ["single", "double"])
def test_imported_label_is_final_with_its_source_in_either_mode(mode: str) -> None:
    out = apply_imported(_case(mode), "chestxray14", "pneumonia", now=time.time())
    c = out.case
    assert c["status"] == "final" and c["final"]["resolution"] == "imported" and c["final"]["source"] == "chestxray14"
    (ev,) = out.events
    assert (ev.resolution, ev.reader, ev.label, ev.label_version) == ("imported", "dataset:chestxray14", "pneumonia", 1)
    kinds = {a["label_sk"].split("#")[0]: a for a in out.appends}
    assert kinds["read"]["source"] == kinds["label"]["source"] == "chestxray14"
    assert kinds["read"]["reader"] == "dataset:chestxray14" and kinds["read"]["read_kind"] == "imported"
    # the same label again: nothing to record (a resumed import)
    again = apply_imported(c, "chestxray14", "pneumonia", now=time.time())
    assert not again.appends and not again.events and again.response["result"] == "unchanged"
    # a corrected dataset label: a new version from the same source
    fixed = apply_imported(c, "chestxray14", "normal", now=time.time())
    assert fixed.events[0].label_version == 2 and fixed.response["result"] == "amended"


def test_an_import_never_overrides_a_radiologist() -> None:
    read = apply_read(_case(), "dr-lee", "normal", None, None, now=time.time()).case
    with pytest.raises(ReadRejected) as exc:
        apply_imported(read, "chexpert", "pneumonia", now=time.time())
    assert exc.value.status == 409
    first = apply_read(_case("double"), "dr-lee", "normal", None, None, now=time.time()).case  # one of two reads
    with pytest.raises(ReadRejected):
        apply_imported(first, "chexpert", "pneumonia", now=time.time())
    claimed = dict(_case(), lease_owner="dr-lee", lease_expires_at=time.time() + 60)
    with pytest.raises(ReadRejected):
        apply_imported(claimed, "chexpert", "pneumonia", now=time.time())
    with pytest.raises(ReadRejected) as bad:
        apply_imported(_case(), "Not A Source!", "pneumonia", now=time.time())
    assert bad.value.status == 422
