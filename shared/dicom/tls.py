"""DICOM TLS (PS3.15 B.4, BCP 195) for radloop's DIMSE peers: one server context for every SCP, one client context for
every SCU, so that ingestion's C-STORE SCP, interop's Query/Retrieve SCP and the senders agree on the rules.

- TLS 1.2 or newer, nothing older.
- A server presents its certificate and key (PEM). With a CA file, client certificates signed by it are verified:
  required when ``require_client_cert`` (mutual TLS, the "authenticated" profile), otherwise checked when offered.
- A client verifies the server against a CA file (the system CAs when none), with a client certificate when given.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert_file: str | Path | None, key_file: str | Path | None, ca_file: str | Path | None = None, *,
                   require_client_cert: bool) -> ssl.SSLContext | None:
    """The TLS context of a DIMSE listening port, or None when no certificate is configured (plain DIMSE).

    Loaded when the service starts, so a missing or bad certificate stops it there with the file's error."""
    if not cert_file:
        return None
    if require_client_cert and not ca_file:
        raise ValueError("requiring client certificates needs the CA file that signed them")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    if ca_file:
        ctx.load_verify_locations(cafile=str(ca_file))
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_OPTIONAL if ca_file else ssl.CERT_NONE
    return ctx


def client_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """A TLS client context verifying the peer against ``ca_file`` (system CAs when empty), with a client
    certificate when given (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx
