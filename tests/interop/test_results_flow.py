"""InstanceScored / ImageVerified -> the interop worker -> DICOM objects in the drop folder -> ingestion -> new series
of the same study in the index, forwarded by C-STORE to a real DCMTK storescp; idempotent per source and version."""

from __future__ import annotations

import io
import subprocess
import time

import pydicom

from services.interop.domain import builders as b
from shared.events import ImageVerified, InstanceScored
from tests.interop.conftest import Platform, ScoredStudy, wait_until


def test_ai_results_are_new_series_of_the_same_study(platform: Platform, scored: ScoredStudy, tmp_path) -> None:
    dep, study = platform.dep, scored.study
    sr_item = dep.instance(study, *scored.sr)
    seg_item = dep.instance(study, *scored.seg)
    assert sr_item is not None and seg_item is not None
    assert sr_item["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.34" and sr_item["number_of_frames"] == 0
    assert seg_item["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.66.4" and seg_item["number_of_frames"] == 1
    # the study now lists the derived modalities and series, as QIDO sees them
    st = dep.ddb.get_item(TableName=dep.table, Key={"pk": {"S": f"STUDY#{study}"}, "sk": {"S": "STUDY"}})["Item"]
    assert {m["S"] for m in st["modalities"]["L"]} >= {"DX", "SR", "SEG"}
    assert int(st["num_series"]["N"]) == 3
    sr = pydicom.dcmread(io.BytesIO(dep.get(sr_item["original_key"])))
    assert sr.StudyInstanceUID == study and sr.PatientID == scored.source.PatientID
    p = tmp_path / "sr.dcm"
    p.write_bytes(dep.get(sr_item["original_key"]))
    out = subprocess.run(["dsrdump", "-Ee", str(p)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "error" not in out.stderr.lower(), out.stderr
    assert '"Present"' in out.stdout and '"0.91"' in out.stdout
    assert dep.keys(dep.ingest, "imports/") == [] and dep.keys(dep.ingest, "imports-rejected/") == []


def test_results_are_forwarded_to_the_pacs(platform: Platform, scored: ScoredStudy) -> None:
    dep = platform.dep
    got = wait_until(lambda: (f := platform.pacs.files()) and scored.sr[1] in f and scored.seg[1] in f and f, 60,
                     f"storescp to receive the SR and the SEG\n{platform.interop.log()[-3000:]}")
    for series, sop in (scored.sr, scored.seg):
        stored = pydicom.dcmread(io.BytesIO(dep.get(dep.instance(scored.study, series, sop)["original_key"])))
        received = got[sop]
        assert received.SeriesInstanceUID == series
        # same data set (the file meta differs: storescp writes its own)
        assert {e.tag: e.value for e in received if e.tag != 0x7FE00010} == \
            {e.tag: e.value for e in stored if e.tag != 0x7FE00010}
        if "PixelData" in stored:
            assert (received.pixel_array == stored.pixel_array).all()


def test_regeneration_is_idempotent(platform: Platform, scored: ScoredStudy) -> None:
    dep = platform.dep
    src = scored.source
    before = dep.instance(scored.study, *scored.sr)
    # triage scoring the same image again with the same model (a new event, a later time)
    dep.publish("triage", InstanceScored(study_uid=scored.study, series_uid=str(src.SeriesInstanceUID),
                                         sop_uid=str(src.SOPInstanceUID), status="scored", probability=0.91,
                                         threshold=0.42, priority="urgent", model_version=3))
    time.sleep(4)
    wait_until(lambda: dep.queue_depth(dep.settings.topology.queue_for("interop").name) == 0, 30, "the queue to drain")
    assert dep.instance(scored.study, *scored.sr) == before
    assert dep.keys(dep.ingest, "imports/") == [] and dep.keys(dep.ingest, "imports-rejected/") == []
    st = dep.ddb.get_item(TableName=dep.table, Key={"pk": {"S": f"STUDY#{scored.study}"}, "sk": {"S": "STUDY"}})
    assert int(st["Item"]["num_series"]["N"]) == 3 and int(st["Item"]["num_instances"]["N"]) == 3


def test_verified_read_becomes_an_sr_with_a_pseudonymous_reader(platform: Platform, scored: ScoredStudy) -> None:
    dep = platform.dep
    src = scored.source
    sop = str(src.SOPInstanceUID)
    dep.publish("verification", ImageVerified(
        study_uid=scored.study, series_uid=str(src.SeriesInstanceUID), sop_uid=sop, case_id=sop, label="pneumonia",
        label_version=1, resolution="single", reader="dr.jane.roe@hospital.example", patient_pseudo_id="p" * 32,
        frame_key="frames/x/1.jph", model_version=3, probability=0.91))
    series, rsop = b.series_uid(scored.study, "read-sr", 1), b.sop_uid(sop, "read-sr", 1)
    item = wait_until(lambda: dep.instance(scored.study, series, rsop), 60,
                      f"the read SR to be indexed\n{platform.interop.log()[-3000:]}")
    data = dep.get(item["original_key"])
    assert b"jane" not in data.lower() and b"roe" not in data.lower()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.VerificationFlag == "VERIFIED" and str(ds.VerifyingObserverSequence[0].VerifyingObserverName).startswith(
        "READER^")


def test_interop_status_needs_an_admin_token(platform: Platform, scored: ScoredStudy) -> None:
    import httpx

    from shared.auth import mint_token

    url = f"{platform.interop.url}/interop/status"
    assert httpx.get(url, timeout=10).status_code == 401
    viewer = mint_token(platform.dep.settings, "viewer")
    assert httpx.get(url, headers={"Authorization": f"Bearer {viewer}"}, timeout=10).status_code == 403
    admin = mint_token(platform.dep.settings, "admin")
    body = httpx.get(url, headers={"Authorization": f"Bearer {admin}"}, timeout=10).json()
    assert body["destinations"] == ["pacs"] and body["forwarding"]["sent"] >= 2
    assert body["qr"] is not None
