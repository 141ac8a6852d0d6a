"""Q/R SCP defects found by a review (session 22), each against the SCP in process on the moto deployment with a
real pynetdicom client: a C-FIND cut at the result limit ended in Success; names outside ASCII went out without
Specific Character Set; ``*`` did not match an empty value; a retrieval took wildcards and study-level retrievals by
PatientID alone (the whole archive); one unreadable original ended the whole C-GET; the Study Root model answered at
PATIENT level; an unsupported key with a value was answered 0xFF00; DOE^JOHN^^^ did not match DOE^JOHN."""

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
from services.interop.settings import InteropSettings
from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.idempotency import IdempotencyStore
from shared.publisher import EventPublisher
from shared.service import Runtime
from shared.settings import Settings
from tests.streaming_gateway.store import load_testdata, make_dicom, store_instance

CALLING = "REVIEWSCU"
FIND = sc.StudyRootQueryRetrieveInformationModelFind
GET = sc.StudyRootQueryRetrieveInformationModelGet


@asynccontextmanager
async def _scp(adeployment: Settings, patients: list[tuple[str, str, str]], *, max_results: int = 1000,
               per_study: int = 1) -> AsyncIterator[tuple[int, list[dict[str, Any]], AwsClients]]:
    """The SCP over a fresh deployment holding one study per (patient name, patient ID, accession)."""
    port = free_port()
    settings = InteropSettings(**adeployment.model_dump(), qr_port=port, qr_allowed_calling_aes=[CALLING],
                               qr_max_results=max_results)
    async with AwsClients(settings) as clients:
        ct = load_testdata("693_UNCR.dcm")
        stored = []
        for name, pid, accession in patients:
            study, series = generate_uid(), generate_uid()
            for k in range(per_study):
                charset = {} if name.isascii() else {"extra": {"SpecificCharacterSet": "ISO_IR 192"}}
                stored.append(await store_instance(clients, make_dicom(
                    ct, study=study, series=series, sop=generate_uid(), patient_name=name, patient_id=pid,
                    study_date="20240115", accession=accession, modality="CT", instance_number=k + 1,
                    **charset)))  # type: ignore[arg-type]
        rt = Runtime("interop", settings, clients, EventPublisher(clients, "interop"), IdempotencyStore(clients),
                     AuditLog(clients, "interop"))
        scp = QueryRetrieveSCP(rt, asyncio.get_running_loop())
        scp.start()
        try:
            yield port, stored, clients
        finally:
            await asyncio.to_thread(scp.stop)


def _assoc(port: int, handlers: list[Any] | None = None) -> Any:
    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 20
    for ctx in (FIND, GET, sc.PatientRootQueryRetrieveInformationModelGet, sc.CTImageStorage):
        ae.add_requested_context(ctx)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLOOP_QR",
                         ext_neg=[build_role(sc.CTImageStorage, scp_role=True)], evt_handlers=handlers or [])
    assert assoc.is_established
    return assoc


def _find(port: int, **keys: str) -> list[tuple[Dataset, Dataset | None]]:
    assoc = _assoc(port)
    try:
        q = Dataset()
        q.QueryRetrieveLevel = keys.pop("QueryRetrieveLevel", "STUDY")
        for k, v in keys.items():
            setattr(q, k, v)
        return [(s, ds) for s, ds in assoc.send_c_find(q, FIND) if s]
    finally:
        assoc.release()


def _get(port: int, model: Any = GET, **keys: str) -> tuple[list[Any], int]:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = _assoc(port, [(evt.EVT_C_STORE, on_store)])
    try:
        q = Dataset()
        for k, v in keys.items():
            setattr(q, k, v)
        return [s for s, _ in assoc.send_c_get(q, model) if s], len(received)
    finally:
        assoc.release()


async def test_c_find_matching_and_answers(adeployment: Settings) -> None:
    tag = generate_uid()[-8:]
    patients = [(f"REVIEW^{tag}{i}", f"PR-{tag}-{i}", "") for i in range(4)]
    patients += [(f"MÜLLER^JÜRGEN{tag}", f"PR-{tag}-mu", "ACC"), (f"ИВАНОВ^ИВАН{tag}", f"PR-{tag}-iv", "ACC")]
    async with _scp(adeployment, patients, max_results=3) as (port, _, _):
        # More matches than qr_max_results: the pending answers, then a failure that says so (not Success).
        cut = await asyncio.to_thread(_find, port, PatientID=f"PR-{tag}-*", StudyInstanceUID="")
        assert [s.Status for s, _ in cut] == [0xFF00] * 3 + [0xA700]
        assert "narrow the query" in str(cut[-1][0].ErrorComment)
        # Names outside ASCII: the answer says its character set, and the names arrive intact.
        for pid, name in ((f"PR-{tag}-mu", f"MÜLLER^JÜRGEN{tag}"), (f"PR-{tag}-iv", f"ИВАНОВ^ИВАН{tag}")):
            (hit, final) = await asyncio.to_thread(_find, port, PatientID=pid, PatientName="")
            assert final[0].Status == 0x0000 and hit[1] is not None
            assert hit[1].SpecificCharacterSet == "ISO_IR 192" and str(hit[1].PatientName) == name
        # "*" is universal matching: it also matches an empty accession number.
        empty = await asyncio.to_thread(_find, port, PatientID=f"PR-{tag}-0", AccessionNumber="*")
        assert [s.Status for s, _ in empty] == [0xFF00, 0x0000]
        # A key the index cannot match, given a value: answered, but as "optional keys not supported" (0xFF01).
        unsupported = await asyncio.to_thread(_find, port, PatientID=f"PR-{tag}-0", InstitutionName="NOPE")
        assert [s.Status for s, _ in unsupported] == [0xFF01, 0x0000]
        # Trailing empty name components may be left out.
        (named, _) = await asyncio.to_thread(_find, port, PatientName=f"REVIEW^{tag}0^^^")
        assert named[0].Status == 0xFF00 and str(named[1].PatientName) == f"REVIEW^{tag}0"
        # The Study Root model has no PATIENT level.
        wrong = await asyncio.to_thread(_find, port, QueryRetrieveLevel="PATIENT", PatientID=f"PR-{tag}-0")
        assert [s.Status for s, _ in wrong] == [0xA900]


async def test_retrievals_are_bounded_by_their_unique_keys(adeployment: Settings) -> None:
    tag = generate_uid()[-8:]
    async with _scp(adeployment, [(f"RETR^{tag}", f"PRR-{tag}", "A1"), (f"RETR^{tag}B", f"PRR-{tag}-b", "A2")]) as (
            port, stored, _):
        for keys in ({"QueryRetrieveLevel": "STUDY", "PatientID": f"PRR-{tag}"},  # no StudyInstanceUID
                     {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"},  # a wildcard
                     {"QueryRetrieveLevel": "STUDY", "PatientID": "PRR-*", "StudyInstanceUID": stored[0]["study"]}):
            statuses, received = await asyncio.to_thread(_get, port, **keys)
            assert (statuses[-1].Status, received) == (0xA900, 0), keys
        ok, received = await asyncio.to_thread(_get, port, QueryRetrieveLevel="STUDY",
                                               StudyInstanceUID=stored[0]["study"])
        assert (ok[-1].Status, received) == (0x0000, 1)


async def test_an_unreadable_original_fails_only_its_own_sub_operation(adeployment: Settings) -> None:
    tag = generate_uid()[-8:]
    async with _scp(adeployment, [(f"BROKEN^{tag}", f"PRB-{tag}", "B1")], per_study=3) as (port, stored, clients):
        s3 = await clients.s3()
        bucket = clients.settings.topology.bucket("images")
        from shared.storage import original_key

        first = stored[0]
        await s3.delete_object(Bucket=bucket, Key=original_key(first["study"], first["series"], first["sop"]))
        statuses, received = await asyncio.to_thread(_get, port, QueryRetrieveLevel="STUDY",
                                                      StudyInstanceUID=first["study"])
    final = statuses[-1]
    assert received == 2  # the two readable instances were sent
    assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0xB000, 2, 1)
