"""Forwarding in-process against the moto server: STOW-RS to a real local HTTP server (with the configured
Authorization header), a destination that keeps failing retried (the handler raises, so the consumer backs off) and,
on the queue's last allowed receive, dead-lettered with the reason; a destination that already received an instance is
not sent to again; C-STORE over TLS."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pydicom
import pytest

from radloop.local.embedded_aws import free_port
from services.interop.adapters.archive import Archive
from services.interop.adapters.senders import SendError
from services.interop.domain import builders as b
from services.interop.service import Forwarder, ForwardingDeadLettered
from services.interop.settings import Destination, InteropSettings
from shared.aws import AwsClients
from shared.consumer import MessageContext
from shared.events import Envelope, InstanceStored, parse_envelope
from shared.settings import Settings
from tests.support.aws import drain_queue, envelope, queue_url
from training.synthetic import generate_case


class _Stow(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers.get("Authorization", ""), body))
        ok = self.headers.get("Authorization") == "Bearer secret-token"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def stow_server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stow)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/dicomweb"
    finally:
        srv.shutdown()
        srv.server_close()


async def _stored_result(clients: AwsClients) -> tuple[InstanceStored, bytes]:
    """An AI SR placed in the images bucket as ingestion would have stored it, and its InstanceStored."""
    src, _, _ = generate_case(2, 11, size=64, prevalence=0.5, difficulty=0.0)
    sr = b.build_ai_sr(src, b.Score(0.7, 0.5, datetime(2026, 1, 2, tzinfo=UTC)), b.Algorithm("radloop", "1", 1))
    data = b.to_bytes(sr)
    key = f"dicom/{sr.StudyInstanceUID}/{sr.SeriesInstanceUID}/{sr.SOPInstanceUID}.dcm"
    s3 = await clients.s3()
    await s3.put_object(Bucket=clients.settings.topology.bucket("images"), Key=key, Body=data)
    ev = InstanceStored(study_uid=str(sr.StudyInstanceUID), series_uid=str(sr.SeriesInstanceUID),
                        sop_uid=str(sr.SOPInstanceUID), sop_class_uid=str(sr.SOPClassUID), modality="SR",
                        number_of_frames=0, rows=0, columns=0, original_key=key, frames_prefix="frames/x",
                        metadata_key="metadata/x", content_sha256="0" * 64, size_bytes=len(data), htj2k_bytes=0,
                        patient_pseudo_id="p", source="s3")
    return ev, data


async def _delivered(clients: AwsClients, ev: InstanceStored, receive_count: int | None = None) -> MessageContext:
    """``ev`` put on the interop queue as EventBridge would and received from it: a real receipt handle."""
    sqs = await clients.sqs()
    url = await queue_url(clients, clients.settings.topology.queue_for("interop").name)
    await sqs.send_message(QueueUrl=url, MessageBody=envelope(ev, "radloop.ingestion"))
    got = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=5,
                                     AttributeNames=["ApproximateReceiveCount"]))["Messages"][0]
    count = receive_count or int(got["Attributes"]["ApproximateReceiveCount"])
    return MessageContext(parse_envelope(got["Body"]), got["MessageId"], count, got["ReceiptHandle"])


async def test_stow_forwarding_then_dead_letter_with_reason(adeployment: Settings, stow_server: str) -> None:
    dests = [Destination(name="cloud-pacs", kind="stow", url=stow_server, authorization="Bearer secret-token"),
             Destination(name="down", kind="dimse", ae_title="NOBODY", host="127.0.0.1", port=free_port())]
    settings = InteropSettings(**adeployment.model_dump(), interop_destinations=dests)
    spec = settings.topology.queue_for("interop")
    _Stow.received.clear()
    async with AwsClients(settings) as clients, httpx.AsyncClient() as http:
        fwd = Forwarder(clients, Archive(clients), settings, http)
        ev, data = await _stored_result(clients)
        # first attempt: STOW succeeds, the DIMSE peer is down -> raise (the consumer backs off, SQS redelivers)
        first = await _delivered(clients, ev)
        with pytest.raises(SendError, match="down"):
            await fwd.on_stored(ev, first)
        assert len(_Stow.received) == 1
        path, auth, body = _Stow.received[0]
        assert path == "/dicomweb/studies" and auth == "Bearer secret-token" and data in body
        assert await drain_queue(clients, spec.dlq_name, wait_s=1) == []
        sqs = await clients.sqs()  # the first delivery was left for redelivery; here the test delivers it anew
        await sqs.delete_message(QueueUrl=await queue_url(clients, spec.name), ReceiptHandle=first.receipt_handle)
        # the last allowed receive: the STOW destination is not sent to again; the message goes to the DLQ with the
        # reason and leaves the queue; the handler still raises, so the event's idempotency record is cleared and a
        # redrive after the destination is fixed forwards it
        with pytest.raises(ForwardingDeadLettered, match="down"):
            await fwd.on_stored(ev, await _delivered(clients, ev, receive_count=spec.max_receive_count))
        assert len(_Stow.received) == 1 and fwd.stats["dead_lettered"] == 1
        dlq = await drain_queue(clients, spec.dlq_name, wait_s=3)
        assert len(dlq) == 1
        reason = dlq[0]["MessageAttributes"]["radloop-dead-letter-reason"]["StringValue"]
        assert "down" in reason and ("association" in reason.lower() or "refused" in reason.lower())
        assert Envelope.model_validate_json(dlq[0]["Body"]).detail["sop_uid"] == ev.sop_uid
        attrs = await sqs.get_queue_attributes(QueueUrl=await queue_url(clients, spec.name),
                                               AttributeNames=["ApproximateNumberOfMessages",
                                                               "ApproximateNumberOfMessagesNotVisible"])
        assert sum(int(v) for v in attrs["Attributes"].values()) == 0, "the dead-lettered message left the queue"


async def test_only_radloop_results_are_forwarded(adeployment: Settings, stow_server: str) -> None:
    settings = InteropSettings(**adeployment.model_dump(), interop_destinations=[
        Destination(name="cloud-pacs", kind="stow", url=stow_server, authorization="Bearer secret-token")])
    async with AwsClients(settings) as clients, httpx.AsyncClient() as http:
        fwd = Forwarder(clients, Archive(clients), settings, http)
        ev, _ = await _stored_result(clients)
        image = ev.model_copy(update={"modality": "DX"})
        assert await fwd.on_stored(image, await _delivered(clients, image)) == {"skipped": "not forwarded"}
        with pytest.raises(ValueError, match="url"):
            Destination(name="x", kind="stow", url="ftp://nowhere")


def test_c_store_over_tls(tmp_path) -> None:
    """A DIMSE destination with ``tls``: the C-STORE goes over TLS to a peer whose certificate the CA file trusts,
    and the same send without TLS is refused by that peer."""
    import ssl

    from pynetdicom import AE, evt
    from pynetdicom import sop_class as sc

    from services.interop.adapters.senders import c_store
    from tests.interop.test_qr_tls import _self_signed

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        got.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context(sc.Comprehensive3DSRStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server_ctx,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        src, _, _ = generate_case(6, 11, size=64, prevalence=0.5, difficulty=0.0)
        sr = b.build_ai_sr(src, b.Score(0.9, 0.5, datetime(2026, 1, 4, tzinfo=UTC)), b.Algorithm("radloop", "1", 1))
        c_store(b.to_bytes(sr), ae_title="TLSPACS", host="127.0.0.1", port=port, calling_ae_title="RADLOOP",
                tls=True, ca_file=cert)
        assert got == [str(sr.SOPInstanceUID)]
        with pytest.raises(SendError):
            c_store(b.to_bytes(sr), ae_title="TLSPACS", host="127.0.0.1", port=port, calling_ae_title="RADLOOP")
    finally:
        server.shutdown()


async def test_a_destination_s_reply_text_is_not_the_reason() -> None:
    """A PACS may refuse with a sentence quoting the patient (a patient-ID clash names both patients): the reason
    that is logged and dead-lettered keeps the HTTP status and the DICOM failure reasons, not the text (found by a
    review)."""
    from services.interop.adapters.senders import stow

    reply = {"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [0xA700]}}]},
             "00000902": {"vr": "LO", "Value": ["Patient ID PIDLEAK4711 is registered to DOE^JANE"]}}

    def pacs(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json=reply)

    dest = Destination(name="cloud-pacs", kind="stow", url="http://127.0.0.1:9/dicomweb")
    async with httpx.AsyncClient(transport=httpx.MockTransport(pacs)) as http:
        with pytest.raises(SendError) as err:
            await stow(b"DICM", dest, http)
    assert str(err.value) == "STOW-RS to cloud-pacs answered HTTP 409 (failure reason 0xA700)."
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500, text="DOE^JANE"))) as h:
        with pytest.raises(SendError, match=r"answered HTTP 500\.$"):
            await stow(b"DICM", dest, h)


@pytest.mark.integration
def test_c_store_reaches_a_pacs_that_accepts_only_the_default_transfer_syntax(tmp_path) -> None:
    """A real DCMTK storescp accepting Implicit VR Little Endian only (``+xi``), the default every AE supports: the
    result arrives (before: only the file's own syntax, Explicit VR LE, was offered; the association failed and every
    result was dead-lettered; found by a review, session 22)."""
    import subprocess

    from services.interop.adapters.senders import c_store
    from tests.interop.conftest import _port_open, stop, wait_until

    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "LEGACY", "-od", str(tmp_path), "-uf", "+xi", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or _port_open(port), 15, "storescp to listen")
        src, _, _ = generate_case(6, 12, size=64, prevalence=0.5, difficulty=0.0)
        sr = b.build_ai_sr(src, b.Score(0.9, 0.5, datetime(2026, 1, 4, tzinfo=UTC)), b.Algorithm("radloop", "1", 1))
        assert sr.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        c_store(b.to_bytes(sr), ae_title="LEGACY", host="127.0.0.1", port=port, calling_ae_title="RADLOOP")
        wait_until(lambda: any(p.is_file() for p in tmp_path.iterdir()), 10, "the object to arrive")
        (received,) = [pydicom.dcmread(p) for p in tmp_path.iterdir() if p.is_file()]
        assert received.SOPInstanceUID == sr.SOPInstanceUID
        assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    finally:
        stop(proc)
