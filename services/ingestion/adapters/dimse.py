"""The DIMSE C-STORE SCP (pynetdicom), run inside the ingestion service process.

pynetdicom serves each association on its own thread. A C-STORE hands the received Part 10 bytes to the shared
pipeline on the service's event loop and waits for it, so the status goes back only after the original, the frames,
the metadata, the index items and the instance's audit record are durable:

- 0x0000 success (also for an instance already stored with the same content);
- a failure status with the pipeline's reason in ErrorComment: 0xA700 out of resources, 0xA900 data set does not
  match SOP class, 0xC000 cannot understand, 0x0111 duplicate SOP instance with other content.

C-ECHO is answered. The called AE title must be ours.

Security (docs/ingestion.md, "DIMSE security"), all decided before anything is buffered or stored:

- *Admission*: the calling AE title must be in ``dimse_allowed_calling_aes`` (``*`` allows any, local only) and, when
  ``dimse_calling_ae_addresses`` pins it, come from one of its addresses; otherwise A-ASSOCIATE-RJ (permanent,
  service user, calling AE title not recognised). At most ``dimse_max_associations`` associations are served at once
  (one more: A-ASSOCIATE-RJ transient, local limit exceeded); TCP connections beyond twice that are closed at once.
- *Bounded receiving*: no PDU longer than ``dimse_max_pdu_bytes`` (at least 64 KiB) is read; such a PDU aborts the
  association. Each C-STORE data set is counted as its fragments arrive: past ``max_instance_bytes``, or when all
  associations together would hold more than ``dimse_max_buffered_bytes``, what was buffered is dropped, the rest is
  discarded as it arrives, and the request is answered 0xA700 with the reason. Memory therefore never holds more than
  the budget, whatever the peers send. Sockets time out after ``network_timeout`` without data, even inside a PDU.
- *TLS*: with ``dimse_tls_cert_file``/``dimse_tls_key_file`` the port speaks TLS only (1.2 or later), with client
  certificates verified against ``dimse_tls_ca_file`` (required unless ``dimse_tls_require_client_cert`` is false).
  The handshake runs on the connection's own thread with a timeout, never on the accepting thread.
- *Audit*: each stored instance has a durable ``store`` record before its 0x0000 (no record, no acknowledgement:
  0xA700); each refused one a ``store`` record with outcome ``failure`` (best effort: a refusal acknowledges nothing);
  each association, rejected ones and failed TLS handshakes included, a ``dimse-association`` record when it ends
  (calling and called AE, peer address, TLS client subject, counts, outcome, reason).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import ipaddress
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Coroutine
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom import sop_class as sc
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from services.ingestion.settings import IngestionSettings
from shared.auth import Principal
from shared.dicom import tls as dicom_tls
from shared.dicom.errors import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, DicomRejection, TransientFailure
from shared.dicom.sop_classes import STORAGE_SOP_CLASSES as ARCHIVE_STORAGE_CLASSES

if TYPE_CHECKING:  # the SCP is an entry point that calls the service, as the routes do
    from services.ingestion.service import IngestPipeline

log = logging.getLogger(__name__)

#: The storage SOP classes accepted: the archive's one list (shared.dicom.sop_classes), which the Q/R SCP serves too.
STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(UID(u) for u in ARCHIVE_STORAGE_CLASSES)

#: Seconds without data (between PDUs, inside a PDU, or during the TLS handshake) before a connection is dropped.
NETWORK_TIMEOUT_S = 60.0
#: The smallest PDU length cap: an A-ASSOCIATE-RQ proposing many contexts is tens of KiB.
MIN_PDU_CAP = 64 << 10
#: How long the audit record of an ended association may take to be written.
AUDIT_TIMEOUT_S = 30.0

#: A-ASSOCIATE-RJ (result, source, diagnostic) per admission refusal (PS3.8 9.3.4).
REJECTIONS: dict[str, tuple[int, int, int]] = {
    "called-ae-not-recognised": (0x01, 0x01, 0x07),
    "calling-ae-not-allowed": (0x01, 0x01, 0x03),
    "calling-ae-from-other-address": (0x01, 0x01, 0x03),
    "association-limit": (0x02, 0x03, 0x02),
}


def decodable_transfer_syntaxes() -> list[UID]:
    """Native syntaxes plus every compressed syntax pydicom has a working decoder for here."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000TransferSyntaxes,
        JPEGLSTransferSyntaxes,
        JPEGTransferSyntaxes,
        RLELossless,
    )

    out = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
    for uid in [*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes, RLELossless]:
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except (NotImplementedError, ValueError):
            continue
    return out


def tls_context(settings: IngestionSettings) -> ssl.SSLContext | None:
    """The server TLS context of the DIMSE port (shared.dicom_tls, the rules every radloop SCP follows), or None when
    DICOM TLS is not configured."""
    if settings.dimse_tls_cert_file is None or settings.dimse_tls_key_file is None:
        return None
    return dicom_tls.server_context(settings.dimse_tls_cert_file, settings.dimse_tls_key_file,
                                    settings.dimse_tls_ca_file,
                                    require_client_cert=settings.dimse_tls_require_client_cert)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: 64 characters at most
    return ds


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return ip


class ReceiveBudget:
    """Data-set bytes held in memory by all associations together (thread-safe; never blocks: a refusal is the
    answer, so two half-received instances can never wait on each other)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when that would exceed the limit."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass
class Receipt:
    """One C-STORE data set as it arrives: its size so far, the bytes it holds in the budget, and why it is refused
    (None while it is accepted)."""

    budget: ReceiveBudget
    size: int = 0
    held: int = 0
    refusal: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def release(self) -> None:
        """Give the held bytes back (idempotent; called when the request is answered or the association ends)."""
        with self._lock:
            held, self.held = self.held, 0
        if held:
            self.budget.give(held)


@dataclass
class AssociationRecord:
    """What the association's audit record says (identifiers only: AE titles, addresses, counts)."""

    peer: str
    tls: bool
    client_subject: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    counts: dict[str, int] = field(default_factory=lambda: {"stored": 0, "duplicate": 0, "refused": 0,
                                                            "failed": 0, "echo": 0})
    reason: str = ""
    admitted: bool = False
    t0: float = field(default_factory=time.monotonic)


class _TaggingQueue(queue.Queue):  # type: ignore[type-arg]
    """pynetdicom's DIMSE message queue, attaching the receipt of the message being completed to its primitive, so
    the C-STORE handler knows whether the data set was refused while it arrived."""

    def __init__(self, dimse: _BoundedDIMSE) -> None:
        super().__init__()
        self._dimse = dimse

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        receipt = self._dimse.completing
        if receipt is not None:
            item[1]._radloop_receipt = receipt
            self._dimse.completing = None
        super().put(item, block, timeout)


class _BoundedDIMSE(DIMSEServiceProvider):
    """Counts each data set's fragments as they arrive (on the DUL thread) and stops buffering a refused one."""

    def __init__(self, assoc: Association, scp: StorageSCP) -> None:
        super().__init__(assoc)
        self.scp = scp
        self.completing: Receipt | None = None
        self.receipts: list[Receipt] = []
        self.msg_queue = _TaggingQueue(self)

    def receive_primitive(self, primitive: Any) -> None:
        pdvs = []
        for context_id, data in primitive.presentation_data_value_list:
            if data and not data[0] & 1:  # message control header xxxxxxx0: a data-set fragment
                data = self._admit(data)
            pdvs.append([context_id, data])
        primitive.presentation_data_value_list = pdvs
        super().receive_primitive(primitive)
        if self.message is None and self.completing is not None:
            # The message ended without reaching the queue (pynetdicom handles some requests elsewhere): its bytes
            # are gone, so is its reservation.
            self.completing.release()
            self.completing = None

    def _admit(self, data: bytes) -> bytes:
        """The fragment to buffer: ``data`` itself, or only its control header once the data set is refused."""
        r = self.completing
        if r is None:
            r = self.completing = Receipt(self.scp.budget)
            self.receipts.append(r)
            self.receipts = [x for x in self.receipts if x.held or x is r]  # answered ones hold nothing
        n = len(data) - 1
        r.size += n
        if r.refusal is None:
            if r.size > self.scp.settings.max_instance_bytes:
                r.refusal = "too-large"
            elif not r.budget.take(n):
                r.refusal = "busy"
            else:
                r.held += n
                return data
            if self.message is not None:  # drop what was buffered: the request will be refused anyway
                self.message.data_set = io.BytesIO()
            r.release()
        return data[:1]  # keep the header: its "last fragment" bit ends the message

    def release_all(self) -> None:
        for r in self.receipts:
            r.release()
        if self.completing is not None:
            self.completing.release()


class _BoundedSocket(AssociationSocket):
    """Never reads a PDU longer than the cap: the association is aborted (A-ABORT, invalid PDU) instead."""

    def __init__(self, assoc: Association, client_socket: socket.socket, cap: int) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._cap = cap

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self._cap:
            rec: AssociationRecord = cast(Any, self._assoc).radloop
            rec.reason = rec.reason or "pdu-too-long"
            log.warning("DIMSE PDU longer than the cap; aborting the association",
                        extra={"pdu_bytes": nr_bytes, "cap": self._cap, "peer": rec.peer})
            # Evt19 (invalid PDU) sends the A-ABORT; the short read that follows closes the connection.
            self._assoc.dul.event_queue.put("Evt19")
            return bytearray()
        return super().recv(nr_bytes)


class _AdmissionACSE(ACSE):
    """Admission before pynetdicom's own negotiation: allowed calling AE, its pinned addresses, the called AE title
    and the association limit, with a reason kept for the audit record."""

    def __init__(self, assoc: Association, scp: StorageSCP) -> None:
        super().__init__(assoc)
        self.scp = scp

    def _negotiate_as_acceptor(self) -> None:
        assoc = cast("_Association", self.assoc)
        rq = self.requestor.primitive
        assert rq is not None  # set by the reactor before negotiation
        rec = assoc.radloop
        rec.calling_ae = str(rq.calling_ae_title).strip()
        rec.called_ae = str(rq.called_ae_title).strip()
        reason = self.scp.admit(rec)
        if reason is not None:
            rec.reason = reason
            self.requestor.ae_title = rq.calling_ae_title
            self.send_reject(*REJECTIONS[reason])
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        super()._negotiate_as_acceptor()


class _Association(Association):
    """An acceptor with the bounded DIMSE provider, the admission ACSE and an audit record written when it ends."""

    def __init__(self, ae: AE, scp: StorageSCP, rec: AssociationRecord) -> None:
        super().__init__(ae, "acceptor")
        self.scp = scp
        self.radloop = rec
        self.dimse = _BoundedDIMSE(self, scp)
        self.acse = _AdmissionACSE(self, scp)

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self.scp.ended(self)


class _Handler(RequestHandler):
    """One TCP connection: TLS handshake (on this thread, with a timeout), then an :class:`_Association`."""

    server: _Server

    def handle(self) -> None:
        scp = self.server.scp
        rec = AssociationRecord(peer=str(self.client_address[0]), tls=scp.ssl_context is not None)
        started = False
        try:
            self.request.settimeout(NETWORK_TIMEOUT_S)  # also bounds a PDU that stops half-way (slowloris)
            if scp.ssl_context is not None:
                try:
                    self.request = scp.ssl_context.wrap_socket(self.request, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    rec.reason = f"tls-handshake-failed: {type(exc).__name__}"
                    log.warning("DICOM TLS handshake failed", extra={"peer": rec.peer, "error": str(exc)[:200]})
                    return
                rec.client_subject = _subject(self.request)
            assoc = self._create(rec)
            scp.track(assoc)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            started = True
        except Exception:
            log.exception("DIMSE connection failed before its association started", extra={"peer": rec.peer})
            rec.reason = rec.reason or "connection-failed"
        finally:
            if not started:
                scp.connection_closed(rec)
                try:
                    self.request.close()
                except OSError:
                    pass

    def _create(self, rec: AssociationRecord) -> _Association:
        # As pynetdicom's RequestHandler._create_association, with our association and socket classes.
        scp = self.server.scp
        assoc = _Association(self.ae, scp, rec)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(_BoundedSocket(assoc, self.request, max(scp.settings.dimse_max_pdu_bytes, MIN_PDU_CAP)))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *cast(tuple[Any, Any], handlers))
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[tuple[Any, Any]], handlers):
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def _subject(sock: Any) -> str:
    """The client certificate's subject CN (empty without one)."""
    try:
        cert = sock.getpeercert() or {}
    except (OSError, ValueError):
        return ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)[:128]
    return ""


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with a connection cap checked on the accepting thread (nothing else runs there:
    the TLS handshake is the connection thread's job)."""

    scp: StorageSCP
    #: Handler threads only run the TLS handshake: never join them on shutdown, and let a burst queue up.
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.scp.connection_opened(str(client_address[0]))


class StorageSCP:
    """The C-STORE/C-ECHO server; each store waits for the pipeline (see the module docstring)."""

    def __init__(self, pipeline: IngestPipeline, settings: IngestionSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.loop = loop
        self.server: Any = None
        self.stats = {"stored": 0, "duplicate": 0, "failed": 0, "echo": 0, "refused": 0}
        self.budget = ReceiveBudget(settings.dimse_max_buffered_bytes)
        self.ssl_context = tls_context(settings)  # loaded now: a bad certificate stops the service from starting
        self.pins = {ae: [ipaddress.ip_network(s, strict=False) for s in sources]
                     for ae, sources in settings.dimse_calling_ae_addresses.items()}
        self._lock = threading.Lock()
        self._connections = 0
        self._admitted = 0
        self._live: set[_Association] = set()

    @property
    def max_connections(self) -> int:
        """TCP connections held at once: the admitted associations plus as many being negotiated or rejected."""
        return 2 * self.settings.dimse_max_associations

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.dimse_ae_title)
        allowed = [a for a in self.settings.dimse_allowed_calling_aes if a != "*"]
        # pynetdicom's own checks stay as a second line behind admit().
        ae.require_calling_aet = [] if "*" in self.settings.dimse_allowed_calling_aes else allowed
        ae.require_called_aet = True
        ae.maximum_associations = self.max_connections
        ae.maximum_pdu_size = self.settings.dimse_max_pdu_bytes
        ae.network_timeout = NETWORK_TIMEOUT_S
        ae.dimse_timeout = self.settings.dimse_store_timeout_s
        syntaxes = decodable_transfer_syntaxes()
        for cls in STORAGE_SOP_CLASSES:
            ae.add_supported_context(cls, syntaxes)
        ae.add_supported_context(sc.Verification)
        return ae

    def start(self) -> None:
        """Listen on ``dimse_host:dimse_port`` (a daemon thread accepts; each connection gets its own threads)."""
        ae = self._ae()
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        server = cast(_Server, ae.make_server((self.settings.dimse_host, self.settings.dimse_port),
                                              evt_handlers=handlers, server_class=_Server, request_handler=_Handler))
        server.scp = self
        ae._servers.append(server)  # pynetdicom's shutdown() removes it from there
        threading.Thread(target=make_target(server.serve_forever), name="DimseAcceptor", daemon=True).start()
        self.server = server

    def stop(self, drain_s: float | None = None) -> None:
        """Stop accepting, give open associations ``drain_s`` (default: up to half the drain budget, at most 10 s)
        to finish, then abort the rest (their audit records are written as they end)."""
        if self.server is None:
            return
        self.server.shutdown()
        self.server = None
        if drain_s is None:
            drain_s = min(10.0, self.settings.drain_timeout_s / 2)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._live:
                    return
            time.sleep(0.1)
        with self._lock:
            live = list(self._live)
        for assoc in live:
            assoc.abort()

    # --- admission (accepting thread, then the association's thread) ------------------------------------------

    def track(self, assoc: _Association) -> None:
        with self._lock:
            self._live.add(assoc)

    def connection_opened(self, peer: str) -> bool:
        with self._lock:
            if self._connections >= self.max_connections:
                log.warning("DIMSE connection refused: too many open connections",
                            extra={"peer": peer, "max_connections": self.max_connections})
                return False
            self._connections += 1
            return True

    def connection_closed(self, rec: AssociationRecord) -> None:
        """A connection that never became an association (failed TLS handshake): counted down and audited."""
        with self._lock:
            self._connections -= 1
        self._audit_association(rec, "rejected" if rec.reason else "aborted")

    def admit(self, rec: AssociationRecord) -> str | None:
        """Why an association request is rejected (a key of :data:`REJECTIONS`), or None once it is admitted."""
        s = self.settings
        if rec.called_ae != s.dimse_ae_title.strip():
            return "called-ae-not-recognised"
        if "*" not in s.dimse_allowed_calling_aes and rec.calling_ae not in s.dimse_allowed_calling_aes:
            return "calling-ae-not-allowed"
        pins = self.pins.get(rec.calling_ae)
        if pins is not None:
            ip = _ip(rec.peer)
            if ip is None or not any(ip.version == net.version and ip in net for net in pins):
                log.warning("DIMSE association from an address not pinned to its calling AE title",
                            extra={"calling_ae": rec.calling_ae, "peer": rec.peer})
                return "calling-ae-from-other-address"
        with self._lock:
            if self._admitted >= s.dimse_max_associations:
                return "association-limit"
            self._admitted += 1
            rec.admitted = True
        return None

    def ended(self, assoc: _Association) -> None:
        """The association's thread ends: free its budget and slots, write its audit record."""
        rec = assoc.radloop
        cast(_BoundedDIMSE, assoc.dimse).release_all()
        with self._lock:
            self._connections -= 1
            if rec.admitted:
                self._admitted -= 1
            self._live.discard(assoc)
        if assoc.is_rejected or (rec.reason and not rec.admitted):
            outcome = "rejected"
            # admit() passed but pynetdicom's own second-line checks refused (e.g. its association count still
            # holds the threads of associations that just ended): the record still says why, as far as known.
            rec.reason = rec.reason or "refused-by-negotiation"
        elif assoc.is_released:
            outcome = "partial" if rec.counts["refused"] or rec.counts["failed"] else "success"
        else:
            outcome = "aborted"
        self._audit_association(rec, outcome)

    # --- audit (association threads wait for the service loop) ---------------------------------------------------

    def _principal(self, rec: AssociationRecord) -> Principal:
        return Principal(subject=f"dimse:{rec.calling_ae or '?'}@{rec.peer}", roles=("pacs",) if rec.admitted else ())

    def _audit_association(self, rec: AssociationRecord, outcome: str) -> None:
        resource: dict[str, Any] = {"source": "dimse", "calling_ae": rec.calling_ae, "called_ae": rec.called_ae,
                                    "peer": rec.peer, "tls": rec.tls, "client_subject": rec.client_subject or None,
                                    "reason": rec.reason or None, "seconds": round(time.monotonic() - rec.t0, 1),
                                    **rec.counts}
        log.info("DIMSE association ended", extra={"dimse": {**resource, "outcome": outcome}})
        try:
            self._run(self.pipeline.audit(self._principal(rec), "dimse-association", resource, outcome=outcome,
                                          count=rec.counts["stored"] + rec.counts["duplicate"]), AUDIT_TIMEOUT_S)
        except Exception:  # the association is over: nothing is acknowledged by this record; the log keeps it
            log.exception("the DIMSE association's audit record could not be written")

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    # --- DIMSE handlers (association threads) ------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        self.stats["echo"] += 1
        event.assoc.radloop.counts["echo"] += 1
        return 0x0000

    def _on_store(self, event: Any) -> Any:
        assoc = event.assoc
        rec: AssociationRecord = assoc.radloop
        receipt: Receipt | None = getattr(event.request, "_radloop_receipt", None)
        try:
            return self._store(event, rec, receipt)
        finally:
            if receipt is not None:
                receipt.release()

    def _store(self, event: Any, rec: AssociationRecord, receipt: Receipt | None) -> Any:
        if receipt is not None and receipt.refusal is not None:
            sop = str(event.request.AffectedSOPInstanceUID or "") or None
            if receipt.refusal == "too-large":
                rej = DicomRejection(OUT_OF_RESOURCES, f"Instance over {self.settings.max_instance_bytes} bytes; "
                                     "refused", kind="too-large", sop_uid=sop)
            else:
                rej = DicomRejection(OUT_OF_RESOURCES, "SCP receive buffer full; retry later", kind="scp-busy",
                                     sop_uid=sop)
            log.info("DIMSE data set refused while it arrived",
                     extra={"kind": rej.kind, "bytes": receipt.size, "calling_ae": rec.calling_ae})
            return self._refused(rec, rej)
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # pynetdicom could not assemble a Part 10 object from what was sent
            return self._refused(rec, DicomRejection(CANNOT_UNDERSTAND, f"Cannot understand the data set: {type(exc).__name__}",
                                                     kind="unassemblable"))
        fut = asyncio.run_coroutine_threadsafe(
            self.pipeline.ingest(data, source="dimse", calling_ae=rec.calling_ae), self.loop)
        del data  # the pipeline holds its own reference; this thread's copy may go once it is done
        try:
            result = fut.result(timeout=self.settings.dimse_store_timeout_s)
        except TransientFailure as exc:  # storage trouble or a busy claim: not a refusal of the instance
            return self._failed(rec, exc.reason)
        except DicomRejection as rej:
            return self._refused(rec, rej)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            return self._failed(rec, "Storing the instance took too long; it was not stored.")
        except Exception:
            log.exception("C-STORE failed")
            return self._failed(rec, "The instance could not be stored durably; retry later.")
        # Durable audit before the 0x0000: without the record the sender is told to retry (a duplicate, audited then).
        resource = {"source": "dimse", "calling_ae": rec.calling_ae, "peer": rec.peer, "study": result.study_uid,
                    "series": result.series_uid, "sop": result.sop_uid, "status": result.status}
        try:
            self._run(self.pipeline.audit(self._principal(rec), "store", resource, outcome="success", count=1),
                      AUDIT_TIMEOUT_S)
        except Exception as exc:
            log.warning("C-STORE not acknowledged: its audit record could not be written",
                        extra={"error": type(exc).__name__, "sop_uid": result.sop_uid})
            return self._failed(rec, "The audit record could not be written; retry later.")
        self.stats[result.status] += 1
        rec.counts[result.status] += 1
        return 0x0000

    def _refused(self, rec: AssociationRecord, rej: DicomRejection) -> Dataset:
        self.stats["refused"] += 1
        rec.counts["refused"] += 1
        resource = {"source": "dimse", "calling_ae": rec.calling_ae, "peer": rec.peer, "sop": rej.sop_uid,
                    "kind": rej.kind, "failure_reason": f"0x{rej.failure_reason:04X}"}
        try:  # best effort: a refusal acknowledges nothing, and the association's record counts it too
            self._run(self.pipeline.audit(self._principal(rec), "store", resource, outcome="failure", count=1),
                      AUDIT_TIMEOUT_S)
        except Exception:
            log.warning("the audit record of a refused C-STORE could not be written", extra={"kind": rej.kind})
        return _status(rej.failure_reason, rej.reason)

    def _failed(self, rec: AssociationRecord, reason: str) -> Dataset:
        self.stats["failed"] += 1
        rec.counts["failed"] += 1
        return _status(OUT_OF_RESOURCES, reason)
