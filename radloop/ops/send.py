"""``radloop send``: send DICOM files the way a PACS does (STOW-RS, DIMSE C-STORE, or the S3 drop folder), with a
progress bar and a summary of what was stored and what was rejected, by reason.

STOW-RS sends one instance per request so each file gets its own answer (PS3.18 store response: a FailureReason per
refused instance). DIMSE opens one association for all files. The S3 drop folder only *uploads* under ``imports/``
of the ingestion bucket: ingestion stores the object asynchronously, so ``uploaded`` there is not yet ``stored``.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from radloop.ops.client import (
    Api,
    JsonOpt,
    OpsError,
    TokenOpt,
    UrlOpt,
    console,
    print_json,
    resolve_url,
    response_detail,
    run,
)
from shared.settings import DEFAULT_PORTS

Via = Literal["stow", "dimse", "s3"]
#: Directories are walked at most this deep and this wide (a mistaken `radloop send /` stops with a sentence).
MAX_FILES = 100_000


def collect_files(paths: list[Path]) -> list[Path]:
    """The files named, and every file under the directories named (sorted, hidden files skipped)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not any(x.startswith(".") for x in f.parts[-1:]))
        elif p.is_file():
            out.append(p)
        else:
            raise OpsError(f"{p} does not exist", 2)
        if len(out) > MAX_FILES:
            raise OpsError(f"more than {MAX_FILES} files under {', '.join(map(str, paths))}; send fewer at once", 2)
    if not out:
        raise OpsError("no files to send", 2)
    return out


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = f"radloop-send-{uuid.uuid4().hex}"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _stow_failures(body: Any) -> list[str]:
    """``0xCODE reason`` of each failed instance in a PS3.18 store response (DICOM JSON)."""
    out = []
    for item in ((body or {}).get("00081198") or {}).get("Value") or []:
        code = (item.get("00081197") or {}).get("Value", [None])[0]
        text = (item.get("00000902") or {}).get("Value", [""])[0]
        out.append(f"0x{int(code):04X} {text}".strip() if isinstance(code, int) else str(text or "refused"))
    return out


def send_stow(api: Api, files: list[Path], step: Callable[[dict[str, Any]], None]) -> None:
    """POST each file to /dicomweb/studies; a 4xx is that file's rejection, a 5xx or unreachable deployment stops."""
    for f in files:
        body, ctype = _multipart(f.read_bytes())
        r = api.http.post(api.base + "/dicomweb/studies", content=body,
                          headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
        # Said from STOW's own answer (a read with the pacs token to find the sentence blamed the token's roles for
        # a 502; found by a review).
        if r.status_code == 401:
            raise OpsError(f"{api.base} refused the token (401: {response_detail(r)}); check --token/RADLOOP_TOKEN")
        if r.status_code == 403:
            raise OpsError(f"the token may not store instances (403: {response_detail(r)}); it needs the pacs role")
        if r.status_code >= 500:
            raise OpsError(f"STOW-RS of {f} failed: {api.base} answered {r.status_code} ({response_detail(r)}); nothing more "
                           "was sent, retry later")
        try:
            doc = r.json()
        except ValueError:
            doc = None
        failures = _stow_failures(doc)
        if r.status_code == 200 and not failures:
            step({"path": str(f), "outcome": "stored", "reason": None})
        elif failures:
            step({"path": str(f), "outcome": "rejected", "reason": failures[0]})
        else:
            detail = doc.get("detail") if isinstance(doc, dict) else r.text[:200]
            step({"path": str(f), "outcome": "rejected", "reason": f"HTTP {r.status_code} {detail}"})


def send_dimse(host: str, port: int, called_ae: str, calling_ae: str, files: list[Path],
               step: Callable[[dict[str, Any]], None]) -> None:
    """C-STORE every file over one association (pynetdicom), proposing each file's own SOP class and syntax."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError
    from pynetdicom import AE

    datasets: list[tuple[Path, Any]] = []
    for f in files:
        try:
            datasets.append((f, dcmread(f)))
        except (InvalidDicomError, OSError, ValueError) as exc:
            step({"path": str(f), "outcome": "rejected", "reason": f"not DICOM ({type(exc).__name__})"})
    if not datasets:
        return
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets})
    if len(contexts) > 128:
        raise OpsError("more than 128 distinct SOP class / transfer syntax pairs; send them in several runs", 2)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise OpsError(f"the DIMSE association to {called_ae}@{host}:{port} was {why}: check the AE title, that "
                       f"{calling_ae!r} is allowed (RADLOOP_DIMSE_ALLOWED_CALLING_AES) and the port "
                       "(docs/troubleshooting.md)")
    try:
        for f, ds in datasets:
            st = assoc.send_c_store(ds)
            code = int(getattr(st, "Status", -1)) if st else -1
            if code in (0x0000, 0xB000, 0xB006, 0xB007):
                step({"path": str(f), "outcome": "stored", "reason": None})
            elif code == -1:
                step({"path": str(f), "outcome": "rejected", "reason": "no response (association lost)"})
            else:
                comment = str(getattr(st, "ErrorComment", "") or "")
                step({"path": str(f), "outcome": "rejected", "reason": f"0x{code:04X} {comment}".strip()})
    finally:
        assoc.release()


def send_s3(endpoint: str | None, files: list[Path], step: Callable[[dict[str, Any]], None]) -> None:
    """PUT every file under ``imports/`` of the ingestion bucket (the drop folder ingestion watches)."""
    from radloop.ops.client import local_settings, settings_problem
    from shared.aws import boto3_client

    s = local_settings()
    if s is None:
        raise OpsError(f"--via s3 needs the deployment's settings ({settings_problem()}): set RADLOOP_ENVIRONMENT and "
                       "RADLOOP_PREFIX", 2)
    endpoint = endpoint or s.aws_endpoint_url or _local_endpoint(s)
    if not endpoint and not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        raise OpsError("--via s3: no embedded endpoint found (is `radloop up` running?) and no AWS credentials "
                       "configured (AWS_ACCESS_KEY_ID or AWS_PROFILE)", 2)
    s3 = boto3_client(s.model_copy(update={"aws_endpoint_url": endpoint or ""}), "s3")
    bucket = s.topology.bucket("ingestion")
    batch = uuid.uuid4().hex[:12]
    for k, f in enumerate(files):
        # One key per file: files of the same name in different folders (a/img0.dcm, b/img0.dcm) overwrote each
        # other under imports/{batch}/{name}, and the first was lost (found by a review).
        try:
            s3.put_object(Bucket=bucket, Key=f"imports/{batch}/{k:06d}-{f.name}", Body=f.read_bytes())
        except Exception as exc:  # botocore's errors: the endpoint or bucket is wrong, so every file would fail
            raise OpsError(f"upload of {f.name} to s3://{bucket}/imports/ failed: {type(exc).__name__}: {exc}") from None
        step({"path": str(f), "outcome": "uploaded", "reason": None})


def _local_endpoint(s: Any) -> str:
    try:
        from radloop.local.platform import read_state
    except ImportError:  # the CLI alone (no `local` extra): there is no local platform to find
        return ""
    return str((read_state(s.var_dir) or {}).get("endpoint") or "")


def _dimse_port(port: int | None) -> int:
    if port:
        return port
    raw = os.environ.get("RADLOOP_PORT_DIMSE") or os.environ.get("RADLOOP_DIMSE_PORT")
    return int(raw) if raw and raw.isdigit() else DEFAULT_PORTS["dimse"]


def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files, or directories to walk.", show_default=False)],
    via: Annotated[str, typer.Option(help="stow (DICOMweb STOW-RS), dimse (C-STORE) or s3 (the drop folder).")] = "stow",
    dimse_port: Annotated[int | None, typer.Option(min=1, max=65535,
                                                   help="DIMSE port (default RADLOOP_PORT_DIMSE or 11112).")] = None,
    called_ae: Annotated[str, typer.Option(help="The SCP's AE title (RADLOOP_DIMSE_AE_TITLE).")] = "RADLOOP",
    calling_ae: Annotated[str, typer.Option(help="This sender's AE title.")] = "RADLOOP-CLI",
    aws_endpoint: Annotated[str | None, typer.Option(help="With --via s3: the AWS endpoint (default: the embedded one).")] = None,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Send DICOM files to radloop and summarise what was stored and what was rejected, by reason.

    Exits 1 when any file was rejected. --url names the entry point (STOW-RS) or, for DIMSE, the host.
    """
    def go() -> None:
        if via not in ("stow", "dimse", "s3"):
            raise OpsError(f"--via {via!r}: expected stow, dimse or s3", 2)
        files = collect_files(paths)
        results: list[dict[str, Any]] = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, disable=as_json, transient=False) as progress:
            task = progress.add_task(f"sending via {via}", total=len(files))

            def step(r: dict[str, Any]) -> None:
                results.append(r)
                progress.advance(task)

            if via == "stow":
                with Api(url, token, role="pacs") as api:
                    send_stow(api, files, step)
            elif via == "dimse":
                host = urlsplit(resolve_url(url)).hostname or "127.0.0.1"
                send_dimse(host, _dimse_port(dimse_port), called_ae, calling_ae, files, step)
            else:
                send_s3(aws_endpoint, files, step)
        summary = {
            "via": via, "files": len(files),
            "stored": sum(r["outcome"] == "stored" for r in results),
            "uploaded": sum(r["outcome"] == "uploaded" for r in results),
            "rejected": sum(r["outcome"] == "rejected" for r in results),
            "rejected_by_reason": dict(Counter(r["reason"] for r in results if r["outcome"] == "rejected")),
            "results": results,
        }
        if as_json:
            print_json(summary)
        else:
            t = Table(title=f"sent {len(files)} file(s) via {via}")
            t.add_column("outcome")
            t.add_column("files")
            for k in ("stored", "uploaded", "rejected"):
                if summary[k] or k == "stored":
                    t.add_row(k, str(summary[k]))
            for reason, n in sorted(summary["rejected_by_reason"].items()):
                t.add_row(f"  rejected: {reason}", str(n))
            console.print(t)
        if summary["rejected"]:
            raise typer.Exit(1)
    run(go)
