"""Batch scoring with the triage model, as SageMaker runs it and docker-free on one machine.

Triage re-scores the unread worklist when a new champion is approved. A large backlog is not scored image by image in
the triage tasks: it runs as one **batch transform** over the original DICOM objects (``application/dicom``, the
content type the model package declares), through the same preprocessing triage serves with
(:func:`shared.preprocessing.preprocess`). Each object gives one JSON result naming its SOP Instance UID, so results
are matched to images by what they are, not by output file names.

Two ways to run it, one scoring function (:class:`Scorer`):

``python -m training.serve serve``
    SageMaker's inference container contract: ``GET /ping``, ``POST /invocations`` (one DICOM P10 object in, one
    JSON object out) and ``GET /execution-parameters``, on port 8080, with the model extracted at ``/opt/ml/model``.
    The training image runs it as ``docker run IMAGE serve`` (Batch Transform and real-time endpoints alike).

``python -m training.serve transform --manifest s3://... --model s3://.../model.tar.gz --output s3://...``
    The docker-free transform used on the embedded endpoint: reads the same SageMaker manifest (``[{"prefix": ...},
    "key", ...]``), writes ``<output>/<key>.out`` per object as Batch Transform does, and ``<output>/_SUCCESS`` when
    every object was scored (exit status 1 when some were not, with the reasons in the log).

A result is ``{"sop_instance_uid": "...", "probability": 0.123456, "input_size": 224}``; an object that cannot be
scored gets HTTP 400 (415 for another content type, 413 above the payload bound) with the reason.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from shared.storage import parse_s3_uri

log = logging.getLogger("training.serve")

#: Content types accepted by ``/invocations`` (the model package's declared content types).
CONTENT_TYPES = ("application/dicom", "application/octet-stream")
#: The largest object one invocation takes (a DICOM P10 chest radiograph is a few tens of MB at most).
MAX_PAYLOAD_MB = 100
#: Where SageMaker extracts ``model.tar.gz`` in an inference container.
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
#: Written at the output prefix by the local transform once every object was scored.
SUCCESS_MARKER = "_SUCCESS"
RESULT_SUFFIX = ".out"


class ScoringError(ValueError):
    """The object cannot be scored (not DICOM P10, no pixel data, undecodable); the message says why."""


class Scorer:
    """The model in eval mode and the one function that turns a DICOM P10 object into a probability."""

    def __init__(self, module: Any, config: dict[str, Any]) -> None:
        import torch

        self.config = config
        self.input_size = int(config.get("input_size", 224))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.module = module.to(self.device).eval()
        self._lock = threading.Lock()  # one forward pass at a time: bounded memory, whatever the HTTP concurrency

    @classmethod
    def load(cls, path: str | Path) -> Scorer:
        """From a model directory (SageMaker's ``/opt/ml/model``) or a ``model.tar.gz``."""
        from training.model import load_model_dir

        module, config = load_model_dir(path)
        return cls(module, config)

    def model_input(self, data: bytes) -> tuple[str, np.ndarray]:
        """(SOP Instance UID, preprocessed frame 1) of a DICOM P10 object; :class:`ScoringError` says what is wrong."""
        import pydicom
        from pydicom.errors import InvalidDicomError

        from shared.preprocessing import params_from_dataset, preprocess

        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
            raise ScoringError(f"not a DICOM P10 object ({len(data)} bytes): {exc}") from None
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if not sop:
            raise ScoringError("the object has no SOPInstanceUID")
        if "PixelData" not in ds:
            raise ScoringError(f"instance {sop} has no pixel data")
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this object's fault, said in words
            raise ScoringError(f"instance {sop}: pixel data could not be decoded: {type(exc).__name__}: {exc}") from None
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[0]  # frame 1, as triage scores
        if pixels.ndim != 2:
            raise ScoringError(f"instance {sop}: frame 1 has shape {pixels.shape}, expected one grey plane")
        return sop, preprocess(pixels, params_from_dataset(ds), size=self.input_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N) of an N×S×S float32 batch of preprocessed frames (fp32)."""
        import torch

        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).unsqueeze(1).to(self.device)
            return torch.sigmoid(self.module(x).float().reshape(-1)).cpu().numpy().astype(np.float64)

    def score(self, data: bytes) -> dict[str, Any]:
        """One DICOM P10 object -> its result document."""
        sop, x = self.model_input(data)
        p = float(self.probabilities(x[None])[0])
        return {"sop_instance_uid": sop, "probability": round(p, 6), "input_size": self.input_size}


# -- the SageMaker inference container ---------------------------------------------------------------------------------
def make_handler(scorer: Scorer, max_payload_mb: int = MAX_PAYLOAD_MB) -> type[BaseHTTPRequestHandler]:
    limit = max_payload_mb * 1024 * 1024

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, doc: dict[str, Any] | None = None) -> None:
            body = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/ping":
                self._send(HTTPStatus.OK, {"status": "ok", "input_size": scorer.input_size})
            elif self.path == "/execution-parameters":  # Batch Transform asks once; one object per request
                self._send(HTTPStatus.OK, {"MaxConcurrentTransforms": 1, "BatchStrategy": "SingleRecord",
                                           "MaxPayloadInMB": max_payload_mb})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path!r}; try /ping or /invocations"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/invocations":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path!r}; POST /invocations"})
                return
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                self.close_connection = True
                self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
                return
            if length > limit:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           {"error": f"{length} bytes is above the {max_payload_mb} MB bound of one invocation"})
                return
            data = self.rfile.read(length)
            if ctype not in CONTENT_TYPES:
                self._send(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           {"error": f"content type {ctype or '(none)'!r}; expected one of {', '.join(CONTENT_TYPES)}"})
                return
            try:
                self._send(HTTPStatus.OK, scorer.score(data))
            except ScoringError as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)[:500]})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
            log.debug("%s %s", self.address_string(), format % args)  # URLs hold no PHI; bodies are never logged

    return Handler


def serve(scorer: Scorer, host: str, port: int, ready: threading.Event | None = None,
          max_payload_mb: int = MAX_PAYLOAD_MB) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0: any free one); the caller runs ``serve_forever``."""
    server = ThreadingHTTPServer((host, port), make_handler(scorer, max_payload_mb))
    server.daemon_threads = True
    if ready is not None:
        ready.set()
    return server


# -- the docker-free transform ----------------------------------------------------------------------------------------
def read_manifest(doc: Any) -> tuple[str, str, list[str]]:
    """A SageMaker manifest (``[{"prefix": "s3://b/p/"}, "rel", ...]``) -> (bucket, key prefix, relative keys)."""
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict) or "prefix" not in doc[0]:
        raise ValueError('a manifest is a JSON list: [{"prefix": "s3://bucket/prefix/"}, "relative/key", ...]')
    bucket, prefix = parse_s3_uri(str(doc[0]["prefix"]), what="manifest prefix", key_required=False)
    keys = [str(k) for k in doc[1:]]
    if not all(isinstance(k, str) and k for k in doc[1:]):
        raise ValueError("every manifest entry after the prefix is a non-empty relative key")
    return bucket, prefix, keys


def output_key(output_prefix: str, relative: str) -> str:
    """Where Batch Transform puts the result of input object ``relative``: ``<output>/<relative>.out``."""
    return f"{output_prefix.rstrip('/')}/{relative}{RESULT_SUFFIX}" if output_prefix else f"{relative}{RESULT_SUFFIX}"


def marker_key(output_prefix: str) -> str:
    """The object the local transform writes once every object was scored."""
    return f"{output_prefix.rstrip('/')}/{SUCCESS_MARKER}" if output_prefix else SUCCESS_MARKER


def transform(s3: Any, scorer: Scorer, manifest_uri: str, output_uri: str, *, progress_every: int = 100) -> dict[str, Any]:
    """Score every object of the manifest and write its result; returns ``{"scored", "failed", "failures"}``."""
    mb, mk = parse_s3_uri(manifest_uri, what="manifest URI")
    bucket, prefix, keys = read_manifest(json.loads(s3.get_object(Bucket=mb, Key=mk)["Body"].read()))
    ob, op = parse_s3_uri(output_uri, what="output URI", key_required=False)
    scored, failures = 0, []
    started = time.monotonic()
    for i, rel in enumerate(keys, 1):
        try:
            data = s3.get_object(Bucket=bucket, Key=prefix + rel)["Body"].read()
            doc = scorer.score(data)
        except ScoringError as exc:
            failures.append(f"{rel}: {exc}")
        except Exception as exc:  # noqa: BLE001 - S3 errors: this object fails, the others go on (as SageMaker does)
            failures.append(f"{rel}: {type(exc).__name__}: {exc}"[:500])
        else:
            s3.put_object(Bucket=ob, Key=output_key(op, rel), Body=json.dumps(doc).encode(),
                          ContentType="application/json")
            scored += 1
        if i % progress_every == 0 or i == len(keys):
            rate = i / max(time.monotonic() - started, 1e-9)
            log.info("transform: %d/%d objects (%d failed), %.1f/s", i, len(keys), len(failures), rate)
    if not failures:
        s3.put_object(Bucket=ob, Key=marker_key(op), Body=b"")
    return {"scored": scored, "failed": len(failures), "failures": failures[:50]}


def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.serve", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve", help="SageMaker's inference contract: /ping and /invocations on port 8080")
    sv.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", SAGEMAKER_MODEL_DIR),
                    help="model directory or model.tar.gz (default: %(default)s)")
    sv.add_argument("--host", default="0.0.0.0",  # noqa: S104 - the container's contract; tests pass 127.0.0.1
                    help="address to bind (default: %(default)s, as SageMaker requires)")
    sv.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")),
                    help="port (default: %(default)s)")
    tr = sub.add_parser("transform", help="the docker-free batch transform over a SageMaker manifest in S3")
    tr.add_argument("--manifest", required=True, help="s3:// URI of the manifest")
    tr.add_argument("--model", required=True, help="s3:// URI of the model.tar.gz")
    tr.add_argument("--output", required=True, help="s3:// output prefix (results at <output>/<key>.out)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    if args.cmd == "serve":
        scorer = Scorer.load(args.model_dir)
        server = serve(scorer, args.host, args.port)
        log.info("serving model (input %d) on %s:%d", scorer.input_size, args.host, server.server_address[1])
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0

    import tempfile

    s3 = _s3_client()
    try:
        parse_s3_uri(args.manifest, what="--manifest")
        parse_s3_uri(args.output, what="--output", key_required=False)
        mb, mk = parse_s3_uri(args.model, what="--model")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="radloop-transform-") as tmp:
        path = Path(tmp) / "model.tar.gz"
        s3.download_file(mb, mk, str(path))
        scorer = Scorer.load(path)
    report = transform(s3, scorer, args.manifest, args.output)
    print(json.dumps(report))
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
