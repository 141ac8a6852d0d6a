"""The PHI canary suite (issue 15 §1): patient data goes only where it must.

Instances whose PatientName, PatientID, PatientBirthDate, AccessionNumber and InstitutionName are canary strings
(:data:`CANARIES`) enter radloop through every door: STOW-RS, the S3 drop folder and a DIMSE C-STORE, each with a
good instance and a malformed one (the canaries survive in the broken bytes). QIDO is queried with the canaries in
its query strings (matching, wildcard and invalid values, and a refused ``?token=``), and other routes get
canary-laden query strings and bodies that must be refused. Triage scores the good instances with a test champion and
a radiologist reads one case through verification, so the short loop runs end to end:
ingestion → InstanceStored → triage → InstanceScored → verification → ImageVerified.

Then everything the platform wrote is captured and searched (:func:`find_canaries`, case-insensitive, URL-encoded
forms included because they keep the word ``CANARY``):

- every log line of every service process and of the entry proxy (``{var_dir}/run/*.log``, stdout and stderr);
- every span of the local trace sink (``{var_dir}/traces/*.jsonl``) and every other file under ``var_dir``;
- every event on the bus: a rule created here copies each event whose ``source`` starts with ``radloop`` to a capture
  queue; every message left in every queue of the deployment (the unconsumed orchestrator/registry queues) and
  every dead-letter queue body;
- every item of every DynamoDB table of the deployment (idempotency, outbox, cases, scores, labels, state, runs,
  models, training-labels, audit, instances);
- every S3 object key of every bucket, and every object body outside the allowed set below.

Allowed to hold a canary, and nothing else:

- the **audit table** (``{prefix}-audit``): who did what to which patient's data is its purpose; it is the access
  record HIPAA asks for, read only by auditors;
- the **stored DICOM**: in the images bucket the originals (``dicom/…​.dcm``, the instance exactly as received) and
  the decoded DICOM JSON (``metadata/…​.json``, the same data without bulk data, which WADO-RS metadata serves); in the
  ingest bucket a refused object kept as received for the operator (``imports-rejected/<key>``, not its
  ``.reason.json``);
- the **instance index** (``{prefix}-instances``), the table QIDO-RS answers from, only in the attributes
  :data:`INDEX_PHI_ATTRIBUTES`: the study item's normalised matching fields ``patient_name``, ``patient_id`` (the key
  of the ``by_patient`` index), ``patient_birth_date`` and ``accession_number`` (QIDO matches on them, and
  ``accession_key`` is that number again as the key of the ``by_accession`` index), and
  ``dicom_json``, the instance's DICOM JSON without bulk data that QIDO returns (InstitutionName lives only there).
  Every other attribute of the index (keys, UIDs, counters, ``frame_offsets``, ``content_sha256``…) must be clean.

The HTJ2K frames are binary and searched as bytes (they must not contain the text). Object keys never may: they end
in access logs and S3 inventory, and are built from UIDs only (:mod:`shared.storage`).

Not captured: the moto server's own log (an AWS endpoint's request log is not radloop's; in AWS it does not exist).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pydicom
import pytest

from radloop.local.embedded_aws import free_port
from radloop.local.platform import LocalPlatform
from radloop.smoke import generate_instance
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.settings import Settings
from tests.conftest import bootstrap_sync, unique_prefix
from tests.ingestion.stow_helpers import failed_items, multipart, referenced
from tests.support.triage_data import trained_model_tar
from tests.support.triage_verification_procs import install_champion

pytestmark = pytest.mark.integration

SERVICES = ("ingestion", "streaming_gateway", "triage", "verification")

CANARIES = {
    "PatientName": "CANARY^PHI^NAME",
    "PatientID": "CANARYPID123",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "CANARYACC9",
    "InstitutionName": "CANARY HOSPITAL",
}
# Every canary but the birth date holds the word CANARY, so one case-insensitive word finds them in any encoding that
# keeps letters (PN components, URL-encoding, JSON); the date also in ISO form, never as part of a longer number (a
# nanosecond timestamp or a 2.25 UID could hold the eight digits by chance).
CANARY_RE = re.compile(r"canary|(?<!\d)19010203(?!\d)|(?<!\d)1901-02-03(?!\d)", re.IGNORECASE)
CANARY_BYTES_RE = re.compile(CANARY_RE.pattern.encode(), re.IGNORECASE)

#: Attributes of the instance index that may hold patient data (see the module docstring).
INDEX_PHI_ATTRIBUTES = frozenset({"patient_id", "patient_name", "patient_birth_date", "accession_number",
                                  "accession_key", "dicom_json"})
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def find_canaries(text: str) -> list[str]:
    """Each canary occurrence in ``text`` with some context (empty when clean)."""
    return [text[max(0, m.start() - 80):m.end() + 80] for m in CANARY_RE.finditer(text)]


def canary_instance() -> tuple[pydicom.Dataset, bytes]:
    """A small CR chest PA (triage scores it) with fresh UIDs and every canary in its patient/study attributes."""
    data, *_ = generate_instance()
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in CANARIES.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def malformed(data: bytes) -> bytes:
    """The instance with its Pixel Data cut short: parseable up to the canaries, refused by ingestion."""
    return data[:-1500]


@dataclass
class Capture:
    """What the platform wrote during the run, by sink; ``hits`` holds the canaries found where none may be."""

    settings: Settings
    uids: dict[str, str] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)  # sink -> number of things captured
    hits: dict[str, list[str]] = field(default_factory=dict)  # sink -> "location: context"
    allowed_hits: dict[str, list[str]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)
    log_lines: int = 0
    notes: list[str] = field(default_factory=list)

    def scan(self, sink: str, where: str, text: str, *, allowed: bool = False) -> None:
        self.sources[sink] = self.sources.get(sink, 0) + 1
        found = find_canaries(text)
        if found:
            (self.allowed_hits if allowed else self.hits).setdefault(sink, []).extend(
                f"{where}: …{f}…" for f in found[:3])


async def _prepare(settings: Settings) -> str:
    """Install a champion (so triage scores) and a capture rule+queue for every radloop event; returns its URL."""
    async with AwsClients(settings) as clients:
        artefact, _ = trained_model_tar()
        await install_champion(clients, artefact, version=1, threshold=0.5)
        sqs, events = await clients.sqs(), await clients.events()
        url = (await sqs.create_queue(QueueName=f"{settings.prefix}-phi-capture"))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        rule = f"{settings.prefix}-phi-capture-rule"
        await events.put_rule(Name=rule, EventBusName=settings.topology.bus_name,
                              EventPattern=json.dumps({"source": [{"prefix": "radloop"}]}))
        await events.put_targets(Rule=rule, EventBusName=settings.topology.bus_name,
                                 Targets=[{"Id": "phi-capture", "Arn": arn}])
        return str(url)


def _boto(settings: Settings, name: str) -> Any:
    return boto3.client(name, endpoint_url=settings.aws_endpoint_url, region_name=settings.region,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _drain(sqs: Any, url: str, out: list[dict[str, Any]], wait_s: float = 0.0) -> None:
    deadline = time.monotonic() + wait_s
    for _ in range(200):  # bounded: 200 × 10 messages
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                   MessageAttributeNames=["All"], AttributeNames=["All"]).get("Messages", [])
        for m in msgs:
            out.append(m)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if not msgs:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.2)


def _exercise(plat: LocalPlatform, cap: Capture, capture_url: str) -> None:
    """Drive the platform with canaries through every door, and run the loop to a verified read."""
    from pynetdicom import AE

    base = plat.entry_url
    admin = mint_token(plat.settings, "admin")
    h = {"Authorization": f"Bearer {admin}"}
    http = httpx.Client(timeout=60)
    codes: dict[str, int] = {}

    def call(name: str, method: str, path: str, **kw: Any) -> httpx.Response:
        r = http.request(method, base + path, headers={**h, **kw.pop("headers", {})}, **kw)
        codes[name] = r.status_code
        return r

    # STOW-RS: one good instance; one malformed; one part that is not DICOM at all but names the patient.
    stow_ds, stow_bytes = canary_instance()
    _, bad_bytes = canary_instance()
    body, ctype = multipart([stow_bytes, malformed(bad_bytes), b"CANARY^PHI^NAME CANARYPID123 19010203"])
    r = call("stow", "POST", "/dicomweb/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code in (200, 202), r.text
    assert referenced(r) == [str(stow_ds.SOPInstanceUID)], r.text
    assert len(failed_items(r)) == 2, r.text
    # A STOW that is refused whole (a study path that does not match the instance).
    body, ctype = multipart([canary_instance()[1]])
    call("stow-wrong-study", "POST", f"/dicomweb/studies/{stow_ds.StudyInstanceUID}",
         content=body, headers={"Content-Type": ctype})

    # S3 drop folder: a good instance and a malformed one.
    s3 = _boto(plat.settings, "s3")
    drop_ds, drop_bytes = canary_instance()
    ingest = plat.settings.topology.bucket("ingestion")
    s3.put_object(Bucket=ingest, Key="imports/phi-suite/good.dcm", Body=drop_bytes)
    s3.put_object(Bucket=ingest, Key="imports/phi-suite/bad.dcm", Body=malformed(canary_instance()[1]))

    # DIMSE C-STORE: a good instance and one with its pixel data cut short.
    dimse_ds, _ = canary_instance()
    short, _ = canary_instance()
    short.PixelData = short.PixelData[:100]
    ae = AE(ae_title="PHISUITE")
    ae.add_requested_context(CR_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", plat.ports["dimse"], ae_title="RADLOOP")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(dimse_ds).Status == 0x0000
        assert assoc.send_c_store(short).Status != 0x0000
    finally:
        assoc.release()

    cap.uids = {"stow": str(stow_ds.SOPInstanceUID), "drop": str(drop_ds.SOPInstanceUID),
                "dimse": str(dimse_ds.SOPInstanceUID)}

    # QIDO-RS with the canaries in query strings: matching, wildcard, fuzzy, invalid, and a refused ?token=.
    match = {**CANARIES, "includefield": "all"}
    r = call("qido-match", "GET", "/dicomweb/studies", params=match)
    assert r.status_code == 200 and any(
        s.get("0020000D", {}).get("Value") == [str(stow_ds.StudyInstanceUID)] for s in r.json()), r.text
    call("qido-instances", "GET", "/dicomweb/instances", params={"PatientName": "CANARY*", "PatientID": "CANARYPID123"})
    call("qido-wildcard", "GET", "/dicomweb/studies", params={"PatientName": "*CANARY*PHI*", "fuzzymatching": "true"})
    call("qido-series", "GET", "/dicomweb/series", params={"AccessionNumber": "CANARYACC9",
                                                           "InstitutionName": "CANARY HOSPITAL"})
    call("qido-bad-date", "GET", "/dicomweb/studies", params={"PatientBirthDate": "CANARYPID123"})
    call("qido-bad-limit", "GET", "/dicomweb/studies", params={"PatientID": "CANARYPID123", "limit": "CANARYACC9"})
    call("qido-unknown-key", "GET", "/dicomweb/studies", params={"CANARYPID123": "19010203"})  # ignored: 200
    call("qido-token", "GET", "/dicomweb/studies", params={"PatientName": "CANARY^PHI^NAME", "token": admin},
         headers={"Authorization": ""})
    call("qido-noauth", "GET", "/dicomweb/studies", params={"PatientName": "CANARY^PHI^NAME"},
         headers={"Authorization": "Bearer CANARYPID123"})
    # Other services: canaries in query strings and in bodies they refuse.
    call("triage-model", "GET", "/triage/model", params={"PatientName": "CANARY^PHI^NAME"})
    call("worklist-filter", "GET", "/verification/worklist", params={"modality": "CANARYACC9"})
    call("worklist-bad", "GET", "/verification/worklist", params={"date_from": "19010203X", "limit": "CANARYPID123"})

    # The loop: wait until triage has scored the three good instances and verification lists them.
    want = set(cap.uids.values())
    cases: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = call("worklist", "GET", "/verification/worklist", params={"limit": 200})
        if r.status_code == 200:
            cases = {c["sop_uid"]: c for c in r.json()["items"] if c["sop_uid"] in want}
            if set(cases) == want and all(c["ai"]["status"] == "scored" for c in cases.values()):
                break
        time.sleep(0.5)
    assert set(cases) == want, f"cases {sorted(cases)} of {sorted(want)}\n{plat.processes['triage'].log_path.read_text()[-3000:]}"
    assert all(c["ai"]["status"] == "scored" for c in cases.values()), cases

    # A verification read of the STOW case, after a refused read whose body names the patient.
    cid = cases[cap.uids["stow"]]["case_id"]
    r = call("read-bad", "POST", f"/verification/cases/{cid}/reads",
             json={"label": "CANARY^PHI^NAME", "comment": "CANARYPID123", "patient": "19010203"})
    assert r.status_code == 422, r.text
    assert call("claim", "POST", f"/verification/cases/{cid}/claim").status_code == 200
    r = call("read", "POST", f"/verification/cases/{cid}/reads", json={"label": "normal", "confidence": 0.9})
    assert r.status_code == 200, r.text
    call("case", "GET", f"/verification/cases/{cid}")
    call("metadata", "GET", f"/dicomweb/studies/{stow_ds.StudyInstanceUID}/metadata")
    http.close()

    # Refusals answered as refusals (a 5xx would be a crash, not a refusal).
    for name in ("stow-wrong-study", "qido-bad-date", "qido-bad-limit", "qido-token",
                 "qido-noauth", "worklist-bad"):
        assert 400 <= codes[name] < 500, (name, codes)

    # Events reach the capture queue asynchronously: collect until ImageVerified came through (bounded).
    sqs = _boto(plat.settings, "sqs")
    msgs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _drain(sqs, capture_url, msgs)
        if any(json.loads(m["Body"]).get("detail-type") == "ImageVerified" for m in msgs):
            break
        time.sleep(0.5)
    cap.events = [json.loads(m["Body"]) for m in msgs]
    for m in msgs:
        cap.scan("bus events", f"capture queue {json.loads(m['Body']).get('detail-type')}", json.dumps(m))


def _collect(plat: LocalPlatform, cap: Capture) -> None:
    """After the processes stopped (spans flushed, logs closed): scan every sink."""
    s = plat.settings
    var = Path(s.var_dir)
    for path in sorted(p for p in var.rglob("*") if p.is_file()):
        rel = path.relative_to(var).as_posix()
        data = path.read_bytes()
        if rel.startswith("traces/") and path.suffix == ".jsonl":
            for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                cap.spans.append(json.loads(line))
                cap.scan("spans", f"{rel}:{n}", line)
        elif rel.startswith("run/") and path.suffix == ".log":
            for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                cap.log_lines += 1
                cap.scan("logs", f"{rel}:{n}", line)
        else:
            cap.scan("var files", rel, data.decode("latin-1"))

    sqs = _boto(s, "sqs")
    for q in s.topology.queues.values():
        for name, sink in ((q.name, "queues"), (q.dlq_name, "dead-letter queues")):
            msgs: list[dict[str, Any]] = []
            _drain(sqs, sqs.get_queue_url(QueueName=name)["QueueUrl"], msgs)
            cap.scan(sink, name, "")  # counted even when empty
            for m in msgs:
                cap.scan(sink, name, json.dumps(m))

    ddb = _boto(s, "dynamodb")
    for role, table in s.topology.tables.items():
        cap.scan("tables", table.name, "")
        for page in ddb.get_paginator("scan").paginate(TableName=table.name):
            for item in page["Items"]:
                where = f"{table.name} {json.dumps({k: v for k, v in item.items() if k in ('pk', 'sk', 'id', 'key')})}"
                if role == "audit":
                    cap.scan("audit table", where, json.dumps(item, default=str), allowed=True)
                elif role == "instances":
                    for attr, value in item.items():
                        cap.scan("tables", f"{where} .{attr}", json.dumps(value, default=str),
                                 allowed=attr in INDEX_PHI_ATTRIBUTES)
                else:
                    cap.scan("tables", where, json.dumps(item, default=str))

    s3 = _boto(s, "s3")
    for role, bucket in s.topology.buckets.items():
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                cap.scan("object keys", f"s3://{bucket.name}", key)
                body = s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()
                stored_dicom = (role == "images" and (key.startswith(("dicom/", "metadata/"))) or
                                role == "ingestion" and key.startswith("imports-rejected/")
                                and not key.endswith(".reason.json"))
                if stored_dicom:
                    cap.scan("stored DICOM", f"s3://{bucket.name}/{key}", body.decode("latin-1"), allowed=True)
                else:
                    # binary (frames, heat-maps, models) searched as bytes; text decoded the same way
                    cap.scan("objects", f"s3://{bucket.name}/{key}", body.decode("latin-1"))


@pytest.fixture(scope="module")
def capture(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    """Run the whole scenario once: start the services, exercise them, stop them, scan every sink."""
    started = time.monotonic()
    settings = Settings(aws_endpoint_url=aws_endpoint, prefix=unique_prefix("phi"),
                        var_dir=tmp_path_factory.mktemp("phi-var"), aws_max_attempts=2)
    bootstrap_sync(settings)
    capture_url = asyncio.run(_prepare(settings))
    ports = {name: free_port() for name in (*SERVICES, "entry", "dimse")}
    plat = LocalPlatform(settings=settings, ports=ports, services=SERVICES,
                         extra_env={"RADLOOP_LOG_LEVEL": "DEBUG"})
    cap = Capture(settings=settings)
    try:
        plat.start()
        plat.wait_healthy(timeout_s=120)
        cap.notes.append(f"ready after {time.monotonic() - started:.1f}s")
        _exercise(plat, cap, capture_url)
    finally:
        plat.stop()
    _collect(plat, cap)
    cap.notes.append(f"done after {time.monotonic() - started:.1f}s")
    yield cap


def _report(cap: Capture, sink: str) -> str:
    return f"canaries in {sink}:\n" + "\n".join(cap.hits.get(sink, [])[:20])


def test_every_sink_was_captured(capture: Capture) -> None:
    """The search below is only as good as its capture: each sink holds what the run must have produced."""
    kinds = {e.get("detail-type") for e in capture.events}
    assert {"InstanceStored", "InstanceScored", "ImageVerified", "InstanceRejected"} <= kinds, kinds
    assert capture.log_lines > 50, capture.log_lines
    services = {s.get("service") for s in capture.spans}
    assert set(SERVICES) <= services, services
    # The QIDO queries with canaries in their query strings produced server spans.
    assert any(s.get("kind") == "SERVER" and "/dicomweb/studies" in json.dumps(s.get("attributes", {}))
               for s in capture.spans), "no server span of a QIDO request"
    assert capture.sources.get("tables", 0) >= len(capture.settings.topology.tables) - 1
    assert capture.sources.get("dead-letter queues", 0) >= len(capture.settings.topology.queues)
    # And the canaries are where they must be, so the search does find them (a search that cannot match would pass).
    index_hits = " ".join(capture.allowed_hits.get("tables", []))
    assert all(f".{attr}:" in index_hits for attr in INDEX_PHI_ATTRIBUTES), capture.allowed_hits
    stored = capture.allowed_hits.get("stored DICOM", [])
    assert any("/dicom/" in h or "s3://" in h and ".dcm" in h for h in stored), stored
    assert any("metadata/" in h for h in stored), stored
    assert any("imports-rejected/" in h for h in stored), stored


@pytest.mark.parametrize("sink", ["logs", "spans", "var files", "bus events", "queues", "dead-letter queues",
                                  "tables", "object keys", "objects"])
def test_no_canary_outside_the_audit_table_stored_dicom_and_index(capture: Capture, sink: str) -> None:
    assert sink not in capture.hits, _report(capture, sink)


def test_runtime_is_modest(capture: Capture) -> None:
    """The whole scenario (start, exercise, stop, scan) stays well under the suite's budget."""
    done = float(capture.notes[-1].split()[2].rstrip("s"))
    assert done < 90, capture.notes
