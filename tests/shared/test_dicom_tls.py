"""DICOM TLS contexts (shared.dicom.tls): the one set of rules ingestion's SCP, the Q/R SCP and the senders follow."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from shared.dicom import tls
from tests.interop.test_qr_tls import _self_signed


def test_no_certificate_means_plain_dimse() -> None:
    assert tls.server_context(None, None, require_client_cert=False) is None
    assert tls.server_context("", "", require_client_cert=False) is None


def test_server_context_rules(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    plain = tls.server_context(cert, key, require_client_cert=False)
    assert plain is not None and plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    checked = tls.server_context(cert, key, cert, require_client_cert=False)
    assert checked is not None and checked.verify_mode == ssl.CERT_OPTIONAL  # verified when offered
    mutual = tls.server_context(cert, key, cert, require_client_cert=True)
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="needs the CA file"):
        tls.server_context(cert, key, None, require_client_cert=True)
    with pytest.raises(OSError):  # a missing certificate stops the service when it starts, not at the first peer
        tls.server_context(tmp_path / "missing.pem", key, require_client_cert=False)


def test_client_context_verifies_the_server(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path)
    ctx = tls.client_context(cert)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
