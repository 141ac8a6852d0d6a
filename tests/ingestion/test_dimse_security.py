"""DIMSE security (issue 15, §3 and §6), against the real service process on loopback:

- a C-STORE over the size limit is refused (0xA700) while it arrives, and the process's memory stays bounded;
- a PDU longer than the cap is never read (A-ABORT);
- one association over ``dimse_max_associations`` is rejected (transient, local limit exceeded);
- a calling AE title pinned to 127.0.0.2 is rejected from 127.0.0.1 and accepted from 127.0.0.2;
- every association and every stored or refused instance is in the audit table, and a store whose audit record
  cannot be written is not acknowledged;
- DICOM TLS with client certificates from a CA made here (pynetdicom and DCMTK storescu), refusing clients without
  one, and the all-associations receive budget.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from services.ingestion.settings import IngestionSettings
from shared.settings import Settings
from tests.ingestion.conftest import new_deployment
from tests.ingestion.stow_helpers import fresh
from tests.support.ingestion_service import RunningService, ingestion_service

LIMIT = 1 << 20  # max_instance_bytes of the plain service
ALLOWED = ["STORESCU", "PYNETDICOM", "PINNED", "LIMIT"]


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A deployment of its own: the last test breaks its audit table."""
    return new_deployment(aws_endpoint, tmp_path_factory.mktemp("dimsesec"))


@pytest.fixture(scope="module")
def svc(deployment: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {"RADLOOP_DIMSE_ALLOWED_CALLING_AES": json.dumps(ALLOWED),
           "RADLOOP_DIMSE_CALLING_AE_ADDRESSES": json.dumps({"PINNED": ["127.0.0.2/32"]}),
           "RADLOOP_MAX_INSTANCE_BYTES": str(LIMIT), "RADLOOP_DIMSE_MAX_ASSOCIATIONS": "2",
           "RADLOOP_INGEST_WORKERS": "1"}
    with ingestion_service(deployment, tmp_path_factory.mktemp("dimsesvc"), dimse=True, env=env) as s:
        yield s


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_svc(deployment: Settings, pki: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {"RADLOOP_DIMSE_ALLOWED_CALLING_AES": json.dumps(["STORESCU", "PYNETDICOM"]),
           "RADLOOP_DIMSE_TLS_CERT_FILE": str(pki["server_cert"]), "RADLOOP_DIMSE_TLS_KEY_FILE": str(pki["server_key"]),
           "RADLOOP_DIMSE_TLS_CA_FILE": str(pki["ca_cert"]), "RADLOOP_DIMSE_MAX_BUFFERED_BYTES": str(256 << 10),
           "RADLOOP_INGEST_WORKERS": "1"}
    with ingestion_service(deployment, tmp_path_factory.mktemp("dimsetls"), dimse=True, env=env) as s:
        yield s


# --- helpers --------------------------------------------------------------------------------------------------------


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN PACS-TEST), as PEM files."""
    now = dt.datetime.now(dt.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def cert(subject: str, k: rsa.RSAPrivateKey, issuer: x509.Name | None, signer: rsa.RSAPrivateKey,
             *, ca: bool = False, eku: Any = None, san: Any = None) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                              content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, encipher_only=False,
                                              decipher_only=False), critical=True)
        if eku is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if san is not None:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = key()
    ca = cert("radloop test CA", ca_key, None, ca_key, ca=True)
    out: dict[str, Path] = {}

    def write(name: str, k: rsa.RSAPrivateKey, c: x509.Certificate) -> None:
        out[f"{name}_key"] = d / f"{name}.key"
        out[f"{name}_key"].write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
        out[f"{name}_cert"] = d / f"{name}.pem"
        out[f"{name}_cert"].write_bytes(c.public_bytes(serialization.Encoding.PEM))

    write("ca", ca_key, ca)
    sk, ck, rk = key(), key(), key()
    write("server", sk, cert("127.0.0.1", sk, ca.subject, ca_key, eku=ExtendedKeyUsageOID.SERVER_AUTH,
                             san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]))
    write("client", ck, cert("PACS-TEST", ck, ca.subject, ca_key, eku=ExtendedKeyUsageOID.CLIENT_AUTH))
    rogue_ca_key = key()
    write("rogue", rk, cert("ROGUE", rk, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")]),
                            rogue_ca_key, eku=ExtendedKeyUsageOID.CLIENT_AUTH))
    return out


def client_tls(pki: dict[str, Path], who: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca_cert"]))
    if who is not None:
        ctx.load_cert_chain(pki[f"{who}_cert"], pki[f"{who}_key"])
    return ctx


def scu(title: str, *contexts: Any) -> AE:
    ae = AE(ae_title=title)
    for cx in contexts or (Verification,):
        ae.add_requested_context(cx)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def rejection(assoc: Any) -> tuple[int, int, int]:
    rsp = assoc.acceptor.primitive
    return rsp.result, rsp.result_source, rsp.diagnostic


def audit(deployment: Settings, action: str, *, wait_for: Any = None, wait_s: float = 15.0) -> list[dict[str, Any]]:
    """The deployment's audit records of ``action`` (resource decoded), polling until ``wait_for`` finds one."""
    ddb = boto3.client("dynamodb", endpoint_url=deployment.aws_endpoint_url, region_name="us-east-1")
    deadline = time.monotonic() + wait_s
    while True:
        out = []
        for page in ddb.get_paginator("scan").paginate(TableName=deployment.topology.table("audit"),
                                                        ConsistentRead=True):
            for it in page["Items"]:
                if it["action"]["S"] == action:
                    out.append({"outcome": it["outcome"]["S"], "subject": it["subject"]["S"],
                                "count": int(it["count"]["N"]), **json.loads(it["resource"]["S"])})
        if wait_for is None or any(wait_for(r) for r in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.3)


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def big_sc(mib: int) -> pydicom.Dataset:
    """A Secondary Capture whose Pixel Data is ``mib`` MiB (grayscale 8 bit)."""
    ds, _ = fresh("SC_rgb.dcm")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    del ds.PlanarConfiguration
    ds.Rows, ds.Columns = mib * 256, 4096
    ds.PixelData = bytes(mib << 20)
    return ds


def _storescu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["storescu", *args], capture_output=True, text=True, timeout=60, check=False)


# --- unit: settings and the receive budget --------------------------------------------------------------------------


def test_settings_refuse_bad_dimse_security() -> None:
    with pytest.raises(ValidationError, match="does not allow"):
        IngestionSettings(dimse_allowed_calling_aes=["A"], dimse_calling_ae_addresses={"B": ["10.0.0.1"]})
    with pytest.raises(ValidationError, match="not an IP address"):
        IngestionSettings(dimse_calling_ae_addresses={"A": ["10.0.0.300"]})
    with pytest.raises(ValidationError, match="both"):
        IngestionSettings(dimse_tls_cert_file=Path("/x.pem"))
    with pytest.raises(ValidationError, match="dimse_tls_ca_file"):
        IngestionSettings(dimse_tls_cert_file=Path("/x.pem"), dimse_tls_key_file=Path("/x.key"))
    with pytest.raises(ValidationError, match="4096"):
        IngestionSettings(dimse_max_pdu_bytes=0)


def test_receive_budget_is_shared_and_never_exceeded() -> None:
    from services.ingestion.adapters.dimse import ReceiveBudget

    budget = ReceiveBudget(1000)
    taken: list[int] = []

    def worker() -> None:
        for _ in range(2000):
            if budget.take(7):
                taken.append(budget.used)
                budget.give(7)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert taken and max(taken) <= 1000 and budget.used == 0
    assert budget.take(1000) and not budget.take(1)


# --- plain service -------------------------------------------------------------------------------------------------


def test_oversized_store_is_refused_while_memory_stays_bounded(svc: RunningService, deployment: Settings) -> None:
    big = big_sc(48)
    ae = scu("PYNETDICOM", SecondaryCaptureImageStorage)
    Path(f"/proc/{svc.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak is this test's
    before = rss_kib(svc.process.pid, "VmRSS")
    assoc = ae.associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP", max_pdu=1 << 20)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(big)
        assert status.Status == 0xA700, status
        assert f"over {LIMIT} bytes" in status.ErrorComment
        good, _ = fresh("SC_rgb.dcm")  # the association is still usable
        assert assoc.send_c_store(good).Status == 0x0000
    finally:
        assoc.release()
    growth_mib = (rss_kib(svc.process.pid, "VmHWM") - before) / 1024
    assert growth_mib < 24, f"the SCP's peak memory grew by {growth_mib:.0f} MiB for a refused 48 MiB instance"
    refused = audit(deployment, "store", wait_for=lambda r: r.get("sop") == str(big.SOPInstanceUID))
    rec = next(r for r in refused if r.get("sop") == str(big.SOPInstanceUID))
    assert rec["outcome"] == "failure" and rec["kind"] == "too-large" and rec["failure_reason"] == "0xA700"
    assert svc.alive()


def test_overlong_pdu_is_never_read(svc: RunningService) -> None:
    with socket.create_connection(("127.0.0.1", svc.dimse_port), timeout=10) as s:
        # An A-ASSOCIATE-RQ PDU header announcing 1 GiB: the SCP must abort instead of waiting to buffer it.
        s.sendall(struct.pack(">BBL", 0x01, 0x00, 1 << 30) + b"\x00" * 64)
        answer = s.recv(64)
        assert answer[:1] == b"\x07", f"expected an A-ABORT PDU, got {answer!r}"
        s.settimeout(10)
        while s.recv(4096):  # then the connection is closed
            pass
    assoc = scu("PYNETDICOM").associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP")
    assert assoc.is_established
    assoc.release()


def test_association_limit(svc: RunningService, deployment: Settings) -> None:
    ae = scu("LIMIT")
    held = [ae.associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        extra = ae.associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP")
        assert extra.is_rejected and not extra.is_established
        assert rejection(extra) == (0x02, 0x03, 0x02)  # transient, service provider (presentation), limit exceeded
        assert held[0].send_c_echo().Status == 0x0000  # the admitted ones are untouched
    finally:
        for a in held:
            a.release()
    deadline = time.monotonic() + 10  # the slots free up as the SCP's association threads end
    while True:
        again = ae.associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP")
        if again.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.is_established
    again.release()
    recs = audit(deployment, "dimse-association",
                 wait_for=lambda r: r["calling_ae"] == "LIMIT" and r.get("reason") == "association-limit")
    assert any(r["calling_ae"] == "LIMIT" and r["outcome"] == "rejected" and r.get("reason") == "association-limit"
               for r in recs)
    # every rejected association says why, including those refused by pynetdicom's own second-line checks
    assert all(r.get("reason") for r in recs if r["outcome"] == "rejected"), recs


def test_calling_ae_pinned_to_its_address(svc: RunningService, deployment: Settings) -> None:
    ae = scu("PINNED")
    wrong = ae.associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP")
    assert wrong.is_rejected and rejection(wrong) == (0x01, 0x01, 0x03)  # permanent, service user, calling AE
    right = ae.associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP", bind_address=("127.0.0.2", 0))
    assert right.is_established
    try:
        assert right.send_c_echo().Status == 0x0000
    finally:
        right.release()
    recs = audit(deployment, "dimse-association",
                 wait_for=lambda r: r["calling_ae"] == "PINNED" and r["outcome"] == "success")
    pinned = [r for r in recs if r["calling_ae"] == "PINNED"]
    assert any(r["outcome"] == "rejected" and r.get("reason") == "calling-ae-from-other-address"
               and r["peer"] == "127.0.0.1" for r in pinned)
    assert any(r["outcome"] == "success" and r["peer"] == "127.0.0.2" and r["echo"] == "1" for r in pinned)


def test_storescu_store_and_association_are_audited(svc: RunningService, deployment: Settings,
                                                    tmp_path: Path) -> None:
    ct, data = fresh("CT_small.dcm")
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    r = _storescu("-aet", "STORESCU", "-aec", "RADLOOP", "127.0.0.1", str(svc.dimse_port), str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    sop = str(ct.SOPInstanceUID)
    stores = audit(deployment, "store", wait_s=0)  # the 0x0000 came after the record: no waiting
    rec = next(r for r in stores if r.get("sop") == sop)
    assert rec["outcome"] == "success" and rec["calling_ae"] == "STORESCU" and rec["status"] == "stored"
    assert rec["study"] == str(ct.StudyInstanceUID) and rec["subject"] == "dimse:STORESCU@127.0.0.1"
    assocs = audit(deployment, "dimse-association",
                   wait_for=lambda r: r["calling_ae"] == "STORESCU" and r["stored"] == "1")
    a = next(r for r in assocs if r["calling_ae"] == "STORESCU" and r["stored"] == "1")
    assert a["outcome"] == "success" and a["peer"] == "127.0.0.1" and a["tls"] == "False" and a["count"] == 1
    assert a["called_ae"] == "RADLOOP" and a["refused"] == "0"
    # an unknown calling AE is rejected, and that is audited too
    intruder = scu("INTRUDER").associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP")
    assert intruder.is_rejected and rejection(intruder) == (0x01, 0x01, 0x03)
    recs = audit(deployment, "dimse-association", wait_for=lambda r: r["calling_ae"] == "INTRUDER")
    assert any(r["calling_ae"] == "INTRUDER" and r["outcome"] == "rejected" and r.get("reason") == "calling-ae-not-allowed"
               for r in recs)


# --- TLS service ---------------------------------------------------------------------------------------------------


def test_tls_with_client_certificate(tls_svc: RunningService, pki: dict[str, Path], deployment: Settings) -> None:
    ae = scu("PYNETDICOM", SecondaryCaptureImageStorage)
    assoc = ae.associate("127.0.0.1", tls_svc.dimse_port, ae_title="RADLOOP",
                         tls_args=(client_tls(pki), "127.0.0.1"))
    assert assoc.is_established
    try:
        good, _ = fresh("SC_rgb.dcm")
        assert assoc.send_c_store(good).Status == 0x0000
        # the all-associations budget (256 KiB here) refuses what would not fit, and frees up afterwards
        status = assoc.send_c_store(big_sc(1))
        assert status.Status == 0xA700 and "retry later" in status.ErrorComment
        again, _ = fresh("SC_rgb.dcm")
        assert assoc.send_c_store(again).Status == 0x0000
    finally:
        assoc.release()
    recs = audit(deployment, "dimse-association",
                 wait_for=lambda r: r["tls"] == "True" and r.get("client_subject") == "PACS-TEST")
    rec = next(r for r in recs if r["tls"] == "True" and r.get("client_subject") == "PACS-TEST")
    assert rec["stored"] == "2" and rec["refused"] == "1" and rec["outcome"] == "partial"


@pytest.mark.parametrize("who", [None, "rogue"])
def test_tls_refuses_clients_without_a_trusted_certificate(tls_svc: RunningService, pki: dict[str, Path],
                                                           who: str | None) -> None:
    assoc = scu("PYNETDICOM").associate("127.0.0.1", tls_svc.dimse_port, ae_title="RADLOOP",
                                        tls_args=(client_tls(pki, who), "127.0.0.1"))
    assert not assoc.is_established
    plain = scu("PYNETDICOM").associate("127.0.0.1", tls_svc.dimse_port, ae_title="RADLOOP")  # no TLS at all
    assert not plain.is_established
    assert tls_svc.alive()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK storescu is not installed")
def test_storescu_over_tls(tls_svc: RunningService, pki: dict[str, Path], tmp_path: Path) -> None:
    if "+tls" not in subprocess.run(["storescu", "--help"], capture_output=True, text=True, check=False).stdout:
        pytest.skip("this storescu was built without TLS")
    ct, data = fresh("CT_small.dcm")
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    r = _storescu("+tls", str(pki["client_key"]), str(pki["client_cert"]), "+cf", str(pki["ca_cert"]),
                  "-aet", "STORESCU", "-aec", "RADLOOP", "127.0.0.1", str(tls_svc.dimse_port), str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    plain = _storescu("-aet", "STORESCU", "-aec", "RADLOOP", "127.0.0.1", str(tls_svc.dimse_port), str(path))
    assert plain.returncode != 0


# --- last: breaks this module's audit table --------------------------------------------------------------------------


def test_store_without_a_durable_audit_record_is_not_acknowledged(svc: RunningService,
                                                                  deployment: Settings) -> None:
    ddb = boto3.client("dynamodb", endpoint_url=deployment.aws_endpoint_url, region_name="us-east-1")
    ddb.delete_table(TableName=deployment.topology.table("audit"))
    ae = scu("PYNETDICOM", SecondaryCaptureImageStorage)
    assoc = ae.associate("127.0.0.1", svc.dimse_port, ae_title="RADLOOP")
    assert assoc.is_established
    try:
        ds, _ = fresh("SC_rgb.dcm")
        status = assoc.send_c_store(ds)
        assert status.Status == 0xA700 and "audit" in status.ErrorComment
    finally:
        assoc.release()
    assert svc.alive()
