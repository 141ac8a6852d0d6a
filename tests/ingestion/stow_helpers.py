"""Raw STOW-RS requests (httpx), for the cases a DICOMweb client library would never send."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def multipart(parts: list[bytes], *, part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = f"radloop-{uuid.uuid4().hex}"
    out = io.BytesIO()
    for p in parts:
        out.write(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        out.write(p)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(url: str, token: str, parts: list[bytes], *, study: str | None = None,
         timeout: float = 120.0) -> httpx.Response:
    body, ctype = multipart(parts)
    path = f"{url}/dicomweb/studies" + (f"/{study}" if study else "")
    return httpx.post(path, content=body, headers={"Content-Type": ctype, "Authorization": f"Bearer {token}"},
                      timeout=timeout)


def failed_items(resp: httpx.Response) -> list[dict[str, Any]]:
    return list(resp.json().get("00081198", {}).get("Value", []))


def referenced(resp: httpx.Response) -> list[str]:
    return [i["00081155"]["Value"][0] for i in resp.json().get("00081199", {}).get("Value", [])]


def fresh(name: str = "SC_rgb.dcm", **kw: object) -> tuple[pydicom.Dataset, bytes]:
    """A real file with fresh Study/Series/SOP Instance UIDs (pixel data untouched), and its bytes."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for k, v in kw.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def detail(envelope: dict[str, Any]) -> dict[str, Any]:
    return envelope["detail"] if isinstance(envelope["detail"], dict) else json.loads(envelope["detail"])
