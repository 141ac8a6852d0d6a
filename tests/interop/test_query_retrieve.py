"""The Q/R SCP with real DCMTK clients (findscu, getscu, movescu to a real storescp) and one pynetdicom client:
matching as QIDO does (wildcards, date ranges, levels), retrieved objects equal to the stored originals, the
calling-AE allow-list, and one audit record per operation."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import boto3
import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sc

from tests.interop.conftest import Platform, ScoredStudy, wait_until

CALLED = "RADLOOP_QR"


def _scu(tool: str, platform: Platform, out: Path, *args: str, aet: str | None = None) -> subprocess.CompletedProcess:
    od = ["-od", str(out)] if tool == "getscu" else []  # movescu has no output directory without --port
    cmd = [tool, "-S", "-aet", aet or tool.upper(), "-aec", CALLED, *args, *od, "127.0.0.1", str(platform.interop.qr_port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _find(platform: Platform, tmp_path: Path, *keys: str, model: str = "-S") -> list[Dataset]:
    out = tmp_path / f"find-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    args = [a for k in keys for a in ("-k", k)]
    r = subprocess.run(["findscu", model, "-aet", "FINDSCU", "-aec", CALLED, "-X", "-od", str(out), *args,
                        "127.0.0.1", str(platform.interop.qr_port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _original(platform: Platform, item_key: str) -> Dataset:
    return pydicom.dcmread(io.BytesIO(platform.dep.get(item_key)))


def test_findscu_matches_like_qido(platform: Platform, scored: ScoredStudy, tmp_path: Path) -> None:
    src, study = scored.source, scored.study
    date = str(src.StudyDate)
    found = _find(platform, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=SYNTH*", f"StudyDate={date[:4]}0101-",
                  f"StudyInstanceUID={study}", "ModalitiesInStudy", "NumberOfStudyRelatedSeries")
    assert len(found) == 1 and found[0].StudyInstanceUID == study
    assert {"DX", "SR", "SEG"} <= set(found[0].ModalitiesInStudy)
    # a date range that excludes the study, and a name that does not match
    assert _find(platform, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}",
                 f"StudyDate=-{int(date[:4]) - 1}1231") == []
    assert _find(platform, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}",
                 "PatientName=NOBODY*") == []
    series = _find(platform, tmp_path, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", "SeriesInstanceUID",
                   "Modality", "SeriesNumber")
    by_uid = {str(d.SeriesInstanceUID): str(d.Modality) for d in series}
    assert by_uid[str(src.SeriesInstanceUID)] == "DX"
    assert by_uid[scored.sr[0]] == "SR" and by_uid[scored.seg[0]] == "SEG"
    images = _find(platform, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                   f"SeriesInstanceUID={scored.sr[0]}", "SOPInstanceUID", "SOPClassUID")
    assert [(d.SOPInstanceUID, d.SOPClassUID) for d in images] == [(scored.sr[1], "1.2.840.10008.5.1.4.1.1.88.34")]
    patients = _find(platform, tmp_path, "QueryRetrieveLevel=PATIENT", f"PatientID={src.PatientID}", "PatientName",
                     model="-P")
    assert [(str(d.PatientID), str(d.PatientName)) for d in patients] == [(str(src.PatientID), str(src.PatientName))]


def test_getscu_retrieves_the_originals(platform: Platform, scored: ScoredStudy, tmp_path: Path) -> None:
    src = scored.source
    r = _scu("getscu", platform, tmp_path, "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={scored.study}",
             "-k", f"SeriesInstanceUID={src.SeriesInstanceUID}")
    assert r.returncode == 0, r.stdout + r.stderr
    files = [pydicom.dcmread(p) for p in tmp_path.iterdir() if p.is_file()]
    assert [str(f.SOPInstanceUID) for f in files] == [str(src.SOPInstanceUID)]
    item = platform.dep.instance(scored.study, str(src.SeriesInstanceUID), str(src.SOPInstanceUID))
    assert (files[0].pixel_array == _original(platform, item["original_key"]).pixel_array).all()
    assert (files[0].pixel_array == src.pixel_array).all()


def test_movescu_sends_the_study_to_a_known_ae(platform: Platform, scored: ScoredStudy, tmp_path: Path) -> None:
    src = scored.source
    r = _scu("movescu", platform, tmp_path, "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={scored.study}")
    assert r.returncode == 0, r.stdout + r.stderr
    got = wait_until(lambda: (f := platform.pacs.files()) and str(src.SOPInstanceUID) in f and f, 30,
                     "storescp to receive the moved image")
    assert (got[str(src.SOPInstanceUID)].pixel_array == src.pixel_array).all()
    assert scored.sr[1] in got and scored.seg[1] in got
    # an AE title that is not in the table is refused (0xA801), nothing is sent
    r = _scu("movescu", platform, tmp_path, "-aem", "ELSEWHERE", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={scored.study}")
    assert r.returncode != 0 and "MoveDestinationUnknown" in r.stdout + r.stderr


def test_pynetdicom_client_find_and_get(platform: Platform, scored: ScoredStudy) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(sc.Comprehensive3DSRStorage)
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    assoc = ae.associate("127.0.0.1", platform.interop.qr_port, ae_title=CALLED,
                         ext_neg=[build_role(sc.Comprehensive3DSRStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientName = "synthetic*"  # person names match case-insensitively, as in QIDO
        q.StudyInstanceUID = scored.study
        q.StudyDate = ""
        answers = [ds for status, ds in assoc.send_c_find(q, sc.StudyRootQueryRetrieveInformationModelFind)
                   if status and status.Status == 0xFF00]
        assert [str(a.StudyInstanceUID) for a in answers] == [scored.study]
        assert str(answers[0].StudyDate) == str(scored.source.StudyDate)
        g = Dataset()
        g.QueryRetrieveLevel = "IMAGE"
        g.StudyInstanceUID = scored.study
        g.SeriesInstanceUID = scored.sr[0]
        g.SOPInstanceUID = scored.sr[1]
        statuses = [status.Status for status, _ in assoc.send_c_get(g, sc.StudyRootQueryRetrieveInformationModelGet)
                    if status]
        assert statuses[-1] == 0x0000
    finally:
        assoc.release()
    assert [str(d.SOPInstanceUID) for d in received] == [scored.sr[1]]
    item = platform.dep.instance(scored.study, *scored.sr)
    original = _original(platform, item["original_key"])
    assert received[0] == original  # element by element, the whole data set


def test_unknown_calling_ae_is_refused_and_operations_are_audited(platform: Platform, scored: ScoredStudy) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", platform.interop.qr_port, ae_title=CALLED)
    assert assoc.is_rejected
    dep = platform.dep
    ddb = boto3.client("dynamodb", endpoint_url=dep.settings.aws_endpoint_url, region_name="us-east-1")
    items = ddb.scan(TableName=dep.settings.topology.table("audit"))["Items"]
    records = [(i["action"]["S"], i["subject"]["S"], json.loads(i["resource"]["S"])) for i in items]
    actions = {(a, s) for a, s, _ in records}
    assert ("dicom.find", "ae:FINDSCU") in actions and ("dicom.find", "ae:PYNETDICOM") in actions
    assert ("dicom.get", "ae:GETSCU") in actions and ("dicom.move", "ae:MOVESCU") in actions
    # identifiers and levels only: no query values (names, dates) in the audit trail
    flat = json.dumps(records)
    assert "SYNTH" not in flat.upper() and str(scored.source.PatientID) not in flat


def test_retrieval_without_a_unique_key_is_refused(platform: Platform, scored: ScoredStudy) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", platform.interop.qr_port, ae_title=CALLED)
    assert assoc.is_established
    try:
        g = Dataset()
        g.QueryRetrieveLevel = "STUDY"
        g.StudyDescription = "*"  # no unique key: a retrieval of everything is refused
        g.StudyInstanceUID = ""
        answers = [status for status, _ in assoc.send_c_get(g, sc.StudyRootQueryRetrieveInformationModelGet)
                   if status]
        f = Dataset()
        f.QueryRetrieveLevel = "BOGUS"
        found = [status for status, _ in assoc.send_c_find(f, sc.StudyRootQueryRetrieveInformationModelFind)
                 if status] if assoc.is_established else []
    finally:
        assoc.release()
    # Each refusal says why (Error Comment in the status), as a failure must; it arrived empty before.
    assert [a.Status for a in answers] == [0xA900] and "needs a value" in str(answers[0].get("ErrorComment", ""))
    assert [a.Status for a in found] == [0xA900] and str(found[0].get("ErrorComment", "")), found
