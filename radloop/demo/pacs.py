"""A simulated PACS: sends DICOM files to radloop the three real ways (STOW-RS, DIMSE C-STORE, S3 drop folder)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx


def multipart_related(parts: Iterable[bytes], boundary: str) -> bytes:
    """A ``multipart/related; type="application/dicom"`` body (PS3.18 §8.6)."""
    out = bytearray()
    for p in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += p
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def stow(client: httpx.Client, base: str, token: str, files: Sequence[Path], *, batch: int = 8) -> list[dict[str, Any]]:
    """POST files to ``{base}/studies`` in batches; returns one record per request (status, count, ms)."""
    results = []
    for i in range(0, len(files), batch):
        chunk = files[i : i + batch]
        boundary = uuid.uuid4().hex
        body = multipart_related((f.read_bytes() for f in chunk), boundary)
        t0 = time.perf_counter()
        r = client.post(
            f"{base}/studies",
            content=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=300,
        )
        ms = (time.perf_counter() - t0) * 1000
        results.append({"status": r.status_code, "count": len(chunk), "ms": ms, "per_instance_ms": ms / len(chunk)})
        if r.status_code not in (200, 202):
            raise RuntimeError(f"STOW-RS returned {r.status_code}: {r.text[:300]}")
    return results


def c_store(host: str, port: int, files: Sequence[Path], *, ae_title: str = "DEMO_PACS",
            called_ae: str = "RADLOOP") -> list[int]:
    """Send files over DIMSE C-STORE with pynetdicom; returns the status of each store."""
    from pydicom import dcmread
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title=ae_title)
    ae.requested_contexts = StoragePresentationContexts[:127]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"association with {called_ae}@{host}:{port} was not established")
    statuses = []
    try:
        for f in files:
            status = assoc.send_c_store(dcmread(f))
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    bad = [s for s in statuses if s != 0]
    if bad:
        raise RuntimeError(f"C-STORE failed for {len(bad)} of {len(files)} instances (statuses {sorted(set(bad))})")
    return statuses


def drop_s3(s3: Any, bucket: str, files: Sequence[Path], prefix: str = "imports/demo/") -> list[str]:
    """Put files into the ingestion bucket's ``imports/`` prefix; returns the keys."""
    keys = []
    for f in files:
        key = f"{prefix}{f.name}"
        s3.put_object(Bucket=bucket, Key=key, Body=f.read_bytes())
        keys.append(key)
    return keys
