"""The Q/R SCP's audit trail (found by a review, session 22): a query or retrieval whose audit record cannot be
written sends nothing (the SCP answered C-FIND with patients' names and C-GET with the images while the audit table
was unavailable), and a retrieval's record names its studies, the peer, the role and, for C-MOVE, the destination.

Real parts: the moto server, the SCP in process on the test's deployment, pynetdicom clients, and a pynetdicom
storage SCP as the C-MOVE destination."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sc

from radloop.local.embedded_aws import free_port
from services.interop.adapters.qr_scp import QueryRetrieveSCP
from services.interop.settings import InteropSettings, MoveDestination
from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.idempotency import IdempotencyStore
from shared.publisher import EventPublisher
from shared.service import Runtime
from shared.settings import Settings
from tests.streaming_gateway.store import load_testdata, make_dicom, store_instance

CALLING = "AUDITPROBE"


@asynccontextmanager
async def _scp(adeployment: Settings, *, audit_table: str | None = None,
               moves: dict[str, MoveDestination] | None = None) -> AsyncIterator[tuple[int, dict[str, str], AuditLog]]:
    port = free_port()
    settings = InteropSettings(**adeployment.model_dump(), qr_port=port, qr_allowed_calling_aes=[CALLING],
                               qr_move_destinations=moves or {})
    async with AwsClients(settings) as clients:
        ct = load_testdata("693_UNCR.dcm")
        study, series = generate_uid(), generate_uid()
        await store_instance(clients, make_dicom(ct, study=study, series=series, sop=generate_uid(),
                                                 patient_name="AUDIT^PROBE", patient_id="PID-AUDIT-1",
                                                 study_date="20240115", accession="ACC-A1", modality="CT",
                                                 instance_number=1))
        audit = AuditLog(clients, "interop")
        if audit_table is not None:
            audit.table = audit_table  # a table that does not exist: every audit write fails
        rt = Runtime("interop", settings, clients, EventPublisher(clients, "interop"), IdempotencyStore(clients), audit)
        scp = QueryRetrieveSCP(rt, asyncio.get_running_loop())
        scp.start()
        try:
            yield port, {"study": study, "series": series}, AuditLog(clients, "interop")
        finally:
            await asyncio.to_thread(scp.stop)


def _associate(port: int, *, handlers: list[Any] | None = None) -> Any:
    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 20
    for model in (sc.StudyRootQueryRetrieveInformationModelFind, sc.StudyRootQueryRetrieveInformationModelGet,
                  sc.StudyRootQueryRetrieveInformationModelMove, sc.CTImageStorage):
        ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLOOP_QR",
                         ext_neg=[build_role(sc.CTImageStorage, scp_role=True)], evt_handlers=handlers or [])
    assert assoc.is_established
    return assoc


def _find_and_get(port: int, ids: dict[str, str]) -> tuple[list[tuple[int, str, Any]], list[tuple[int, str]], int]:
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    assoc = _associate(port, handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientName = "AUDIT*"
        q.PatientID = ""
        q.StudyInstanceUID = ids["study"]
        found = [(s.Status, str(s.get("ErrorComment", "")), ds and str(ds.PatientName))
                 for s, ds in assoc.send_c_find(q, sc.StudyRootQueryRetrieveInformationModelFind) if s]
        g = Dataset()
        g.QueryRetrieveLevel = "SERIES"
        g.StudyInstanceUID, g.SeriesInstanceUID = ids["study"], ids["series"]
        got = [(s.Status, str(s.get("ErrorComment", "")))
               for s, _ in assoc.send_c_get(g, sc.StudyRootQueryRetrieveInformationModelGet) if s]
        return found, got, len(received)
    finally:
        assoc.release()


async def test_nothing_is_sent_when_the_audit_record_cannot_be_written(adeployment: Settings) -> None:
    async with _scp(adeployment, audit_table="radloop-no-such-audit-table") as (port, ids, real):
        found, got, received = await asyncio.to_thread(_find_and_get, port, ids)
        records = await real.recent(limit=1000)
    # No match with a patient's name went out, and no image; each failure says why (Error Comment).
    assert [(status, "audit" in comment.lower(), name) for status, comment, name in found] == [(0xA700, True, None)]
    assert (got[-1][0], "audit" in got[-1][1].lower(), received) == (0xA702, True, 0)
    assert not [r for r in records if r["resource"].get("study_uids") == ids["study"]]


async def test_a_retrieval_s_record_names_its_studies_peer_role_and_destination(adeployment: Settings) -> None:
    stored: list[str] = []

    def on_store(event: Any) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    dest_port = free_port()
    dest_ae = AE(ae_title="AUDITDEST")
    dest_ae.add_supported_context(sc.CTImageStorage)
    dest = dest_ae.start_server(("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        moves = {"AUDITDEST": MoveDestination(host="127.0.0.1", port=dest_port)}
        async with _scp(adeployment, moves=moves) as (port, ids, audit):
            found, got, received = await asyncio.to_thread(_find_and_get, port, ids)

            def move() -> list[int]:
                assoc = _associate(port)
                try:
                    m = Dataset()
                    m.QueryRetrieveLevel = "STUDY"
                    m.StudyInstanceUID = ids["study"]
                    return [s.Status for s, _ in assoc.send_c_move(m, "AUDITDEST",
                                                                   sc.StudyRootQueryRetrieveInformationModelMove) if s]
                finally:
                    assoc.release()

            moved = await asyncio.to_thread(move)
            records = [r for r in await audit.recent(limit=1000) if r["subject"] == f"ae:{CALLING}"]
    finally:
        dest.shutdown()
    assert found[0][0] == 0xFF00 and got[-1][0] == 0x0000 and received == 1
    assert moved[-1] == 0x0000 and len(stored) == 1
    by_action = {r["action"]: r for r in records}
    assert set(by_action) == {"dicom.find", "dicom.get", "dicom.move"}
    assert all(r["role"] == "dimse" and r["resource"]["peer"].startswith("127.0.0.1:") for r in records)
    for action in ("dicom.get", "dicom.move"):
        res = by_action[action]["resource"]
        assert (res["study_uids"], res["studies"], res["series"]) == (ids["study"], "1", "1")
    assert by_action["dicom.move"]["resource"]["destination_ae"] == "AUDITDEST"
    assert by_action["dicom.move"]["resource"]["destination"] == f"127.0.0.1:{dest_port}"
    assert "AUDIT^PROBE" not in str(records) and "PID-AUDIT-1" not in str(records)  # identifiers only
