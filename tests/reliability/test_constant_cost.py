"""Issue 16 §5, the bar: the items DynamoDB examines per operation do not grow with the archive.

For each archive size, a fresh deployment's tables are loaded directly (``BatchWriteItem``, items shaped by the
real writers: :func:`shared.index_writer.new_study_items`, the verification domain's transitions and
:func:`services.verification.adapters.cases.index_keys`, :meth:`Outbox.transaction_item`, :meth:`Scores.put`)
with ``size`` instance-index items, ``size`` cases, ``size`` score records and ``size`` young outbox items. Then each
operation runs through the services' own code (the gateway's searcher and index reader, the verification service,
triage's score store, ingestion's outbox) while a botocore ``after-call`` hook on the DynamoDB client adds up what
each call examined: ``ScannedCount`` of a Query or Scan, the items a GetItem or BatchGetItem returned. Every
operation must examine exactly as many items at the larger size as at the smaller one.

Sizes: ``RADLOOP_COST_SIZES`` (default ``1000,3000``; ``make test-cost`` runs ``1000,10000``).
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from services.ingestion.adapters.outbox import Outbox
from services.streaming_gateway.adapters.index import IndexReader
from services.streaming_gateway.domain import qido
from services.streaming_gateway.domain.search import Searcher
from services.triage.adapters.scores import Scores
from services.verification.adapters.cases import index_keys
from services.verification.domain.cases import OPEN, apply_read, apply_scored, apply_stored
from services.verification.service import Verification
from services.verification.settings import VerificationSettings
from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.ddb import to_item
from shared.events import ImageVerified, InstanceScored, InstanceStored
from shared.idempotency import IdempotencyStore
from shared.index_writer import encode_item, new_study_items
from shared.instance_index import IndexRecord, instance_sk, study_pk
from shared.publisher import EventPublisher
from shared.service import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SIZES = tuple(int(s) for s in os.environ.get("RADLOOP_COST_SIZES", "1000,3000").split(","))
TARGET_PATIENT, TARGET_ACCESSION, TARGET_DATE = "PAT-TARGET", "ACC-TARGET", "20240105"
TARGET_INSTANCES = 10  # instances in the target study's one series (MR: the archive's only MR series)
STALE_OUTBOX, PENDING_CASES, BACKLOG = 3, 2, 5
#: live performance's window (the default is 500; moto serialises each returned case slowly, so the test reads 100)
WINDOW = 100


class Examined:
    """Items examined per DynamoDB call, added up under the name of the operation that made them."""

    def __init__(self) -> None:
        self.by_op: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.current: str | None = None

    def __call__(self, parsed: dict[str, Any] | None = None, model: Any = None, **_: Any) -> None:
        if self.current is None or not parsed or model is None:
            return
        name = model.name
        if name in ("Query", "Scan"):
            n = int(parsed.get("ScannedCount", 0))
        elif name == "GetItem":
            n = 1 if parsed.get("Item") else 0
        elif name == "BatchGetItem":
            n = sum(len(v) for v in (parsed.get("Responses") or {}).values())
        else:
            return  # writes: their cost is per item written, not per item stored
        self.by_op[self.current] += n
        self.calls[self.current] += 1

    @contextmanager
    def op(self, name: str) -> Iterator[None]:
        self.current = name
        try:
            yield
        finally:
            self.current = None


def _uid(*parts: int) -> str:
    return "1.2.826.0.1.3680043.10.999." + ".".join(str(p) for p in parts)


def _record(study: int, series: int, sop: int, *, patient: str, accession: str, date: str,
            modality: str) -> IndexRecord:
    st, se, so = _uid(1, study), _uid(2, study, series), _uid(3, study, series, sop)
    return IndexRecord(
        study_uid=st, series_uid=se, sop_uid=so, modality=modality, patient_id=patient,
        study={"study_uid": st, "study_date": date, "study_time": "101500", "accession_number": accession,
               "study_description": "cost", "study_id": "1", "patient_name": f"DOE^{patient}",
               "patient_birth_date": "19700101", "patient_sex": "O", "referring_physician": "",
               "level_sk": f"{date}#{st}", "patient_id": patient},
        series={"study_uid": st, "series_uid": se, "modality": modality, "series_number": series + 1,
                "series_description": "", "body_part": "CHEST", "patient_id": patient},
        instance={"sop_uid": so, "study_uid": st, "series_uid": se, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
                  "instance_number": sop + 1, "number_of_frames": 1, "rows": 8, "columns": 8, "bits_allocated": 16,
                  "samples_per_pixel": 1, "photometric": "MONOCHROME2", "content_sha256": f"{sop:064x}",
                  "frames_prefix": f"frames/{st}/{se}/{so}", "dicom_json": "{}"})


def _instance_items(size: int) -> list[dict[str, Any]]:
    """``size`` index items: the target study (1 series, TARGET_INSTANCES instances), and CT studies of 1 series and
    3 instances (5 items each) dated before it."""
    items: list[dict[str, Any]] = []

    def study(n: int, count: int, **kw: Any) -> None:
        first = _record(n, 0, 0, **kw)
        items.extend(new_study_items(first))
        for sop in range(1, count):
            rec = _record(n, 0, sop, **kw)
            items.append(encode_item(dict(rec.instance, pk=study_pk(rec.study_uid),
                                          sk=instance_sk(rec.series_uid, rec.sop_uid))))

    study(0, TARGET_INSTANCES, patient=TARGET_PATIENT, accession=TARGET_ACCESSION, date=TARGET_DATE, modality="MR")
    n = 1
    while len(items) + 5 <= size:
        study(n, 3, patient=f"PAT-{n}", accession=f"ACC-{n}", date=f"2023{1 + n % 12:02d}{1 + n % 28:02d}",
              modality="CT")
        n += 1
    return items


def _stored_event(i: int) -> InstanceStored:
    return InstanceStored(study_uid=_uid(7, i), series_uid=_uid(8, i), sop_uid=_uid(9, i),
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", modality="CR", body_part="CHEST",
                          number_of_frames=1, rows=8, columns=8, original_key="o", frames_prefix="f",
                          metadata_key="m", content_sha256="0" * 64, size_bytes=1, htj2k_bytes=1,
                          patient_pseudo_id="p", source="stow")


def _cases(size: int) -> list[dict[str, Any]]:
    """``size`` cases from two prototypes made by the domain's transitions: open scored cases (40%) and cases read
    final (60%, outcomes of model version 1); PENDING_CASES of the final ones still hold an unpublished event."""
    def stored(i: int) -> dict[str, Any]:
        e = _stored_event(i)
        c = apply_stored(None, e, mode="single")
        s = InstanceScored(study_uid=e.study_uid, series_uid=e.series_uid, sop_uid=e.sop_uid, status="scored",
                           probability=0.1 + 0.8 * (i % 2), threshold=0.5, priority="routine", model_version=1)
        out = apply_scored(c, s)
        assert out is not None
        out["score"]["event_at"] = "2024-01-01T00:00:00.000000+00:00"  # scored well before it is read (prospective)
        return out

    open_proto = stored(0)
    final_proto = apply_read(stored(1), "reader-1", "pneumonia", None, None, now=time.time()).case
    cases = []
    for i in range(size):
        proto = open_proto if i % 5 < 2 else final_proto
        c = copy.deepcopy(proto)
        cid = _uid(9, 1000 + i)
        c.update(case_id=cid, sop_uid=cid, rev=1)  # as CaseStore.mutate writes it
        if c["status"] == OPEN:
            c["priority_sk"] = c["priority_sk"].rsplit("#", 1)[0] + f"#{cid}"
        else:
            c["final"]["label"] = "pneumonia" if i % 2 else "normal"
        cases.append(c)
    finals = [c for c in cases if c["status"] != OPEN]
    for c in finals[:PENDING_CASES]:
        ev = ImageVerified(study_uid=c["study_uid"], series_uid=c["series_uid"], sop_uid=c["sop_uid"],
                           case_id=c["case_id"], label="normal", label_version=1, resolution="single",
                           reader="reader-1", patient_pseudo_id="p", frame_key="f")
        c["outbox"] = [ev.model_dump_json()]
        c["outbox_since"] = time.time() - 3600
    return [to_item(index_keys(c)) for c in cases]


async def _load(clients: AwsClients, table: str, items: list[dict[str, Any]]) -> None:
    ddb = await clients.dynamodb()
    for i in range(0, len(items), 25):
        pending: dict[str, Any] = {table: [{"PutRequest": {"Item": it}} for it in items[i : i + 25]]}
        for _ in range(10):
            pending = (await ddb.batch_write_item(RequestItems=pending)).get("UnprocessedItems") or {}
            if not pending:
                break
        assert not pending, "moto left items unprocessed"


async def _measure(make_settings: Callable[..., Any], size: int) -> tuple[dict[str, int], dict[str, float]]:
    base = make_settings()
    settings = VerificationSettings(aws_endpoint_url=base.aws_endpoint_url, prefix=base.prefix, var_dir=base.var_dir,
                                    aws_max_attempts=2, verification_outbox_sweep_s=1.0, verification_window=WINDOW)
    async with AwsClients(settings) as clients:
        await bootstrap_topology(clients)
        topo = settings.topology
        publisher = EventPublisher(clients, "verification")
        outbox = Outbox(Runtime("ingestion", settings, clients, EventPublisher(clients, "ingestion"),
                                IdempotencyStore(clients), AuditLog(clients, "ingestion")), stale_s=60.0)
        scores = Scores(clients)
        ev = _stored_event(5)
        young = []
        for i in range(size):
            item = outbox.transaction_item(ev.model_copy(update={"event_id": f"young-{i}"}))["Put"]["Item"]
            young.append(item)
        stale = []
        for i in range(STALE_OUTBOX):
            item = outbox.transaction_item(ev.model_copy(update={"event_id": f"stale-{i}"}))["Put"]["Item"]
            stale.append(dict(item, created_at={"N": f"{time.time() - 3600:.3f}"}))
        await asyncio.gather(_load(clients, topo.table("instances"), _instance_items(size)),
                             _load(clients, topo.table("cases"), _cases(size)),
                             _load(clients, topo.table("outbox"), young + stale))
        await _load(clients, topo.table("scores"), [to_item({"sop_uid": _uid(6, i), "status": "scored",
                                                              "scored_at": f"2024-01-01T00:00:{i % 60:02d}"})
                                                     for i in range(size - BACKLOG)])
        for i in range(BACKLOG):  # images that arrived before any model, recorded as triage records them
            await scores.put(InstanceScored(study_uid=_uid(4, i), series_uid=_uid(4, i), sop_uid=_uid(4, 1, i),
                                            status="unscored", reason="awaiting_model"), awaiting_model=True)

        examined = Examined()
        ddb = await clients.dynamodb()
        ddb.meta.events.register("after-call.dynamodb", examined)
        timings: dict[str, float] = {}
        verification = Verification(clients, settings, publisher)
        searcher = Searcher(IndexReader(clients, series_cache_bytes=1 << 24, instance_ttl_s=5.0), max_results=100)
        target_study, target_series = _uid(1, 0), _uid(2, 0, 0)

        async def run(name: str, call: Callable[[], Awaitable[Any]], check: Callable[[Any], bool]) -> None:
            with examined.op(name):
                t0 = time.perf_counter()
                result = await call()
                timings[name] = (time.perf_counter() - t0) * 1000
            assert check(result), f"{name} at {size}: unexpected result {result!r}"[:500]

        def qido_search(level: str, params: list[tuple[str, str]], fixed: dict[str, str] | None = None
                        ) -> Callable[[], Awaitable[Any]]:
            q = qido.parse_query(level, params, fixed=fixed)
            call = {"STUDY": searcher.studies, "SERIES": searcher.series, "INSTANCE": searcher.instances}[level]
            return lambda: call(q, "http://127.0.0.1")

        try:
            await run("worklist page", lambda: verification.worklist(OPEN, lambda c: True, limit=50, cursor=None),
                      lambda r: len(r[0]) == 50)
            await run("qido studies by PatientID", qido_search("STUDY", [("PatientID", TARGET_PATIENT)]),
                      lambda r: r.count == 1)
            await run("qido studies by AccessionNumber", qido_search("STUDY", [("AccessionNumber", TARGET_ACCESSION)]),
                      lambda r: r.count == 1)
            await run("qido studies by StudyDate", qido_search("STUDY", [("StudyDate", TARGET_DATE)]),
                      lambda r: r.count == 1)
            await run("qido newest 10 studies", qido_search("STUDY", [("limit", "10")]),
                      lambda r: r.count == 10 and r.items[0]["0020000D"]["Value"] == [target_study])
            await run("qido series of a study", qido_search("SERIES", [], {"StudyInstanceUID": target_study}),
                      lambda r: r.count == 1)
            await run("qido series by Modality", qido_search("SERIES", [("Modality", "MR")]), lambda r: r.count == 1)
            await run("qido instances of a series",
                      qido_search("INSTANCE", [], {"StudyInstanceUID": target_study,
                                                   "SeriesInstanceUID": target_series}),
                      lambda r: r.count == TARGET_INSTANCES)
            await run("qido instance by SOPInstanceUID", qido_search("INSTANCE", [("SOPInstanceUID", _uid(3, 0, 0, 4))]),
                      lambda r: r.count == 1)
            await run("triage start: backlog", lambda: scores.backlog(100_000), lambda r: len(r) == BACKLOG)
            await run("performance check", lambda: verification.performance(1),
                      lambda r: r["versions"][0]["sample_size"] == min(WINDOW, size * 3 // 5))
            await run("verification outbox sweep", verification.sweep_outbox, lambda n: n == PENDING_CASES)
            await run("ingestion outbox sweep", outbox.sweep_once, lambda n: n == STALE_OUTBOX)
        finally:
            ddb.meta.events.unregister("after-call.dynamodb", examined)
        return dict(examined.by_op), timings


async def test_items_examined_per_operation_do_not_grow_with_the_archive(make_settings: Any) -> None:
    small, large = SIZES
    counts_small, ms_small = await _measure(make_settings, small)
    counts_large, ms_large = await _measure(make_settings, large)
    report = "\n".join(f"  {op:34s} {counts_small.get(op, 0):6d} {counts_large.get(op, 0):6d} items   "
                       f"{ms_small[op]:7.1f} {ms_large[op]:7.1f} ms" for op in ms_small)
    print(f"\nitems examined (and wall time on moto) at {small} and {large} stored items:\n{report}")
    assert set(ms_small) == set(ms_large)
    grew = {op: (counts_small.get(op, 0), counts_large.get(op, 0)) for op in ms_small
            if counts_large.get(op, 0) != counts_small.get(op, 0)}
    assert not grew, f"items examined grew with the archive ({small} -> {large}):\n{report}"
    # and none of them is a disguised walk of the smaller archive
    assert all(counts_small.get(op, 0) <= 200 for op in ms_small), report
