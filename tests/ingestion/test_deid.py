"""De-identification (PS3.15 Basic Profile): a canary in every profile attribute, at top level and two sequences
deep, disappears; UID remapping is deterministic; BurnedInAnnotation other than NO is quarantined."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from services.ingestion.domain.prepare import PrepareOptions, prepare
from shared.dicom.deid import burned_in_annotation_reason, deidentify, load_table, remap_uid
from shared.dicom.parse import ParseLimits
from tests.ingestion.stow_helpers import fresh

KEY = "test-deid-key"
CANARY = "CANARYQZ"


def _canary_value(vr: str, n: int) -> object:
    return {
        "UI": f"1.2.826.0.1.999.{n}", "DA": "20991231", "TM": "235959", "DT": "20991231235959", "AS": "099Y",
        "IS": "98765", "DS": "98765.5", "US": 54321, "SS": 4321, "UL": 987654, "SL": 98765, "FL": 9.5, "FD": 9.5,
        "CS": CANARY, "UR": f"http://{CANARY.lower()}.example",
    }.get(vr, f"{CANARY}{n}")


def _fill(ds: Dataset) -> list[str]:
    """Put a canary into every exact-tag attribute of the profile; return the canary UIDs used."""
    exact, _ = load_table()
    uids = []
    for n, (tag, _rule) in enumerate(sorted(exact.items())):
        if tag >> 16 in (0x0000, 0x0002):
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            item = Dataset()
            item.CodeMeaning = f"{CANARY}SQ{n}"
            ds.add_new(tag, "SQ", Sequence([item]))
        elif vr in ("OB", "OW", "UN"):
            ds.add_new(tag, vr, CANARY.encode() * 2)
        else:
            v = _canary_value(vr, n)
            if vr == "UI":
                uids.append(str(v))
            ds.add_new(tag, vr, v)
    ds.add_new(0x00091010, "LO", f"{CANARY}PRIVATE")
    return uids


def _nested_dataset() -> tuple[Dataset, list[str]]:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Modality = "OT"
    uids = _fill(ds)
    inner = Dataset()
    uids += _fill(inner)
    middle = Dataset()
    middle.ReferencedSeriesSequence = Sequence([inner])  # not in the profile: kept, cleaned inside
    ds.ReferencedInstanceSequence = Sequence([middle])
    return ds, uids


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def test_canaries_disappear_top_level_and_two_sequences_deep() -> None:
    ds, uids = _nested_dataset()
    assert len(uids) > 20
    before = _bytes(ds)
    assert before.count(CANARY.encode()) > 300
    deidentify(ds, key=KEY)
    after = _bytes(ds)
    assert CANARY.encode() not in after and CANARY.lower().encode() not in after
    for u in uids:
        assert u.encode() not in after, f"UID {u} survived"
    for stamp in (b"20991231", b"235959", b"98765", b"54321"):
        assert stamp not in after
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert 0x00091010 not in ds  # private removed
    # UIDs inside the kept sequence two levels deep were remapped the same way as at top level
    inner = ds.ReferencedInstanceSequence[0].ReferencedSeriesSequence[0]
    assert inner.SOPInstanceUID == ds.SOPInstanceUID and inner.SOPInstanceUID.startswith("2.25.")


def test_uid_remap_is_deterministic_and_valid() -> None:
    a, b = remap_uid("1.2.3.4", KEY), remap_uid("1.2.3.4", KEY)
    assert a == b and a != remap_uid("1.2.3.5", KEY) and a != remap_uid("1.2.3.4", "other-key")
    assert a.startswith("2.25.") and len(a) <= 64
    # through the whole prepare step: same input UIDs, same output UIDs
    ds, data = fresh("emri_small.dcm")
    opts = PrepareOptions(limits=ParseLimits(), pseudonym_key="p", deidentify=True, deid_key=KEY)
    p1, p2 = prepare(data, opts), prepare(data, opts)
    assert (p1.study_uid, p1.series_uid, p1.sop_uid) == (p2.study_uid, p2.series_uid, p2.sop_uid)
    assert p1.sop_uid == remap_uid(str(ds.SOPInstanceUID), KEY) and p1.study_uid != str(ds.StudyInstanceUID)
    stored = pydicom.dcmread(io.BytesIO(p1.stored_bytes))
    assert stored.file_meta.MediaStorageSOPInstanceUID == p1.sop_uid
    assert not str(stored.get("PatientName", "")) and stored.PatientIdentityRemoved == "YES"
    assert p1.record.instance["dicom_json"].find(str(ds.SOPInstanceUID)) < 0


@pytest.mark.parametrize(("value", "quarantined"), [("NO", False), ("YES", True), (None, True)])
def test_burned_in_annotation_quarantine(value: str | None, quarantined: bool) -> None:
    ds = Dataset()
    if value is not None:
        ds.BurnedInAnnotation = value
    assert (burned_in_annotation_reason(ds) is not None) is quarantined


def test_two_patients_get_two_pseudonyms_when_deidentified() -> None:
    """The pseudonym is computed from the PatientID as received, before de-identification blanks it: two patients
    keep two pseudonyms (and so can land in different train/val/test splits); one patient keeps one."""
    from shared.events import pseudonymise

    opts = PrepareOptions(limits=ParseLimits(), pseudonym_key="pk", deidentify=True, deid_key=KEY)
    a1 = prepare(fresh("emri_small.dcm", PatientID="PAT-A")[1], opts)
    a2 = prepare(fresh("emri_small.dcm", PatientID="PAT-A")[1], opts)
    b = prepare(fresh("emri_small.dcm", PatientID="PAT-B")[1], opts)
    assert all(p.deidentified for p in (a1, a2, b))
    pseudo = [p.record.instance["patient_pseudo_id"] for p in (a1, a2, b)]
    assert pseudo[0] == pseudo[1] != pseudo[2]
    assert pseudo[0] == pseudonymise("PAT-A", "pk") and pseudo[2] == pseudonymise("PAT-B", "pk")
    assert [p.event_fields["patient_pseudo_id"] for p in (a1, a2, b)] == pseudo
    # the stored object and the index still hold no PatientID from the input
    assert b"PAT-B" not in b.stored_bytes and "PAT-B" not in b.record.instance["dicom_json"]
    assert "PAT-B" not in b.record.patient_id
