"""Sending one Part 10 object to a destination: DIMSE C-STORE (pynetdicom, optionally over TLS) or DICOMweb STOW-RS.

Each sender raises :class:`SendError` with a sentence naming the destination and what went wrong; the forwarding
use case retries, and dead-letters the message with that sentence as its reason after the last attempt.
"""

from __future__ import annotations

import asyncio
import io
import uuid

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from services.interop.settings import Destination
from shared.dicom import tls as dicom_tls


class SendError(RuntimeError):
    """A destination refused the object or could not be reached."""


def c_store(data: bytes, *, ae_title: str, host: str, port: int, calling_ae_title: str, tls: bool = False,
            ca_file: str = "", cert_file: str = "", key_file: str = "", what: str = "") -> None:
    """C-STORE one object (blocking; run it in a thread). Raises :class:`SendError` unless the status is success."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ts = ds.file_meta.TransferSyntaxUID
    # An uncompressed object is offered in its own syntax and in Explicit and Implicit VR Little Endian: Implicit VR
    # LE is the default every AE supports (PS3.5 §10.1), and pynetdicom re-encodes between uncompressed syntaxes.
    # Only the file's syntax was offered, so a PACS accepting the default alone got nothing (found by a review).
    syntaxes = list(dict.fromkeys([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian])) if not ts.is_compressed else [ts]
    ae.add_requested_context(ds.SOPClassUID, syntaxes)
    tls_args = (dicom_tls.client_context(ca_file, cert_file, key_file), host) if tls else None
    label = what or f"{ae_title}@{host}:{port}"
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise SendError(f"The association with {label} was {reason}.")
    if not any(c.abstract_syntax == ds.SOPClassUID for c in assoc.accepted_contexts):
        assoc.abort()
        raise SendError(f"{label} accepted none of the offered transfer syntaxes ({', '.join(syntaxes)}) for SOP "
                        f"class {ds.SOPClassUID}.")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code == -1:
        raise SendError(f"{label} sent no C-STORE response (connection lost or timed out).")
    if code not in (0x0000, 0xB000, 0xB006, 0xB007):  # success, or warnings (coercion/elements discarded)
        # The status code only: the peer's ErrorComment is free text that may quote the patient (it is logged and
        # kept as the dead-letter reason).
        raise SendError(f"{label} answered C-STORE status 0x{code:04X}.")


async def stow(data: bytes, dest: Destination, client: httpx.AsyncClient) -> None:
    """STOW-RS one object to ``{url}/studies`` (PS3.18 §10.5). Raises :class:`SendError` unless 200/202."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    if dest.authorization:
        headers["Authorization"] = dest.authorization
    try:
        resp = await client.post(dest.url.rstrip("/") + "/studies", content=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise SendError(f"STOW-RS to {dest.name} failed: {type(exc).__name__}.") from None
    if resp.status_code not in (200, 202):
        # The status and the DICOM failure reasons only: the reply's text may quote the patient (a PACS refusing a
        # patient-ID clash names both patients; found by a review), and this sentence is logged and dead-lettered.
        raise SendError(f"STOW-RS to {dest.name} answered HTTP {resp.status_code}{_failure_codes(resp)}.")


def _failure_codes(resp: httpx.Response) -> str:
    """``" (failure reasons 0xA700, ...)"`` from a PS3.18 store response's Failed SOP Sequence, or ``""``."""
    try:
        items = ((resp.json() or {}).get("00081198") or {}).get("Value") or []
        values = [((it.get("00081197") or {}).get("Value") or [None])[0] for it in items[:100] if isinstance(it, dict)]
    except (ValueError, TypeError, AttributeError, IndexError):
        return ""
    codes = sorted({v for v in values if isinstance(v, int) and 0 <= v <= 0xFFFF})
    return f" (failure reason {', '.join(f'0x{c:04X}' for c in codes)})" if codes else ""


async def send(data: bytes, dest: Destination, client: httpx.AsyncClient) -> None:
    """Send one object to one destination."""
    if dest.kind == "stow":
        await stow(data, dest, client)
        return
    await asyncio.to_thread(c_store, data, ae_title=dest.ae_title, host=dest.host, port=dest.port,
                            calling_ae_title=dest.calling_ae_title, tls=dest.tls, ca_file=dest.tls_ca_file,
                            cert_file=dest.tls_cert_file, key_file=dest.tls_key_file, what=dest.name)
