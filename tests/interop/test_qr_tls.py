"""The Q/R SCP in process, on the moto deployment of the test: over TLS a client that trusts the SCP's certificate
associates and queries while a client without TLS gets no association; and the association limit is enforced."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.dataset import Dataset
from pynetdicom import AE
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


def _self_signed(tmp: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radloop-qr-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "qr.pem", tmp / "qr.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _client(port: int, tls_ctx: ssl.SSLContext | None) -> tuple[bool, list[int]]:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.network_timeout = 10 if tls_ctx else 3  # a plain client never gets an answer
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLOOP_QR",
                         tls_args=(tls_ctx, "127.0.0.1") if tls_ctx else None)
    if not assoc.is_established:
        return False, []
    try:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        q.StudyDate = "20200101-"
        return True, [s.Status for s, _ in assoc.send_c_find(q, sc.StudyRootQueryRetrieveInformationModelFind) if s]
    finally:
        assoc.release()


async def test_qr_scp_over_tls(adeployment: Settings, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    settings = InteropSettings(**adeployment.model_dump(), qr_port=port, qr_tls_cert_file=cert, qr_tls_key_file=key,
                               qr_allowed_calling_aes=["PYNETDICOM"])
    async with AwsClients(settings) as clients:
        rt = Runtime("interop", settings, clients, EventPublisher(clients, "interop"), IdempotencyStore(clients),
                     AuditLog(clients, "interop"))
        scp = QueryRetrieveSCP(rt, asyncio.get_running_loop())
        scp.start()
        try:
            trusting = ssl.create_default_context(cafile=cert)
            ok, statuses = await asyncio.to_thread(_client, port, trusting)
            assert ok and statuses == [0x0000]  # an empty deployment: no match, a clean final status
            plain_ok, _ = await asyncio.to_thread(_client, port, None)
            assert not plain_ok
        finally:
            await asyncio.to_thread(scp.stop)


async def test_qr_scp_association_limit(adeployment: Settings) -> None:
    port = free_port()
    settings = InteropSettings(**adeployment.model_dump(), qr_port=port, qr_max_associations=1,
                               qr_allowed_calling_aes=["PYNETDICOM"])
    async with AwsClients(settings) as clients:
        rt = Runtime("interop", settings, clients, EventPublisher(clients, "interop"), IdempotencyStore(clients),
                     AuditLog(clients, "interop"))
        scp = QueryRetrieveSCP(rt, asyncio.get_running_loop())
        scp.start()

        def two_at_once() -> tuple[bool, bool, bool]:
            ae = AE(ae_title="PYNETDICOM")
            ae.acse_timeout = ae.network_timeout = 10
            ae.add_requested_context(sc.Verification)
            first = ae.associate("127.0.0.1", port, ae_title="RADLOOP_QR")
            try:
                second = ae.associate("127.0.0.1", port, ae_title="RADLOOP_QR")
                second_ok = second.is_established
                if second_ok:
                    second.release()
                return first.is_established, second_ok, second.is_rejected
            finally:
                first.release()

        try:
            first_ok, second_ok, second_rejected = await asyncio.to_thread(two_at_once)
        finally:
            await asyncio.to_thread(scp.stop)
    assert first_ok and not second_ok and second_rejected
