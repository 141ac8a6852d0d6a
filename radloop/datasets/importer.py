"""Send a dataset's images to ingestion (STOW-RS) and its labels to verification, resumably.

The run works in batches (bounded memory): the images of a batch are sent with at most ``concurrency`` STOW-RS
requests in flight (one instance per request, so each gets its own answer); then their labels go to
``PUT /verification/cases/{sop}/imported-label``. A case exists once ingestion's ``InstanceStored`` has reached
verification, moments after the STOW answer, so a 404 is retried with a pause until ``label_wait_s``.

Resumability: a journal (JSON lines) records, per image, the hash of its dataset-relative key, the stored SOP Instance
UID and the label once verification accepted it. A rerun skips what is labelled with the same label, and only labels
what was stored but not labelled; ``--limit`` counts only images not yet done, so successive runs continue. Both
calls are idempotent on the server anyway (same bytes: "already stored"; same label: "unchanged").

Nothing here prints or logs a file name, a patient id or an age: the summary has counts and ingestion's reasons.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from radloop.datasets.formats import Item

#: Pause between tries of a label whose case does not exist yet, and of a STOW-RS answered 503.
RETRY_PAUSE_S = 0.5


class ImportAborted(Exception):
    """The deployment refused or failed in a way that every further image would meet too (auth, 5xx, unreachable)."""


def item_hash(key: str) -> str:
    """The journal's name for an image: a hash of its dataset-relative key (the key holds the dataset's ids)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Journal:
    """Append-only JSON lines: ``{"k": hash, "sop": uid, "label": label|null}``; the last line of a hash wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by an interrupted run
                if isinstance(rec, dict) and isinstance(rec.get("k"), str):
                    self.done[rec["k"]] = rec
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("a").close()  # a directory or an unwritable place fails now (OSError), not after the first image

    def record(self, key: str, sop: str, label: str | None) -> None:
        k = item_hash(key)
        rec: dict[str, Any] = {"k": k, "sop": sop, "label": label}
        with self._lock:
            self.done[k] = rec
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")

    def state(self, item: Item) -> dict[str, Any] | None:
        return self.done.get(item_hash(item.key))


@dataclass
class Outcome:
    """What happened to one image: ``labelled``, ``unchanged``, ``rejected`` (with a reason) or ``conflict``."""

    outcome: str
    label: str
    reason: str | None = None
    stored: bool = False


@dataclass
class Summary:
    """Counts of a run (no file names, no patient data)."""

    fmt: str
    candidates: int = 0
    already_done: int = 0
    attempted: int = 0
    stored: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.fmt, "candidates": self.candidates, "already_imported": self.already_done,
                "attempted": self.attempted, "stored": self.stored, **{k: self.outcomes.get(k, 0) for k in
                                                                        ("labelled", "unchanged", "rejected",
                                                                         "conflict")},
                "labels": dict(self.labels), "rejected_by_reason": dict(self.reasons),
                "excluded_by_policy": dict(self.excluded), "seconds": round(self.seconds, 1)}


def payload(item: Item, source: str) -> bytes:
    """What is sent for ``item``: a DICOM file exactly as published, a PNG/JPEG wrapped as Secondary Capture."""
    if item.kind == "dicom":
        return item.path.read_bytes()
    # numpy, Pillow and pydicom are imported only when an image needs wrapping: the CLI runs on the core install.
    from radloop.datasets.wrap import secondary_capture

    return secondary_capture(item, source)


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = f"radloop-import-{uuid.uuid4().hex}"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _first(item: dict[str, Any], tag: str) -> Any:
    return ((item.get(tag) or {}).get("Value") or [None])[0]


class Importer:
    """One import run against a deployment's entry point (``base``) with an admin token."""

    def __init__(self, base: str, token: str, source: str, journal: Journal, *, concurrency: int = 4,
                 label_wait_s: float = 120.0, timeout_s: float = 60.0) -> None:
        self.base = base.rstrip("/")
        self.source = source
        self.journal = journal
        self.concurrency = max(1, concurrency)
        self.label_wait_s = label_wait_s
        self.http = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {token}"},
                                 limits=httpx.Limits(max_connections=self.concurrency + 2))

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, self.base + path, **kw)
        except httpx.HTTPError as exc:
            raise ImportAborted(f"cannot reach {self.base} ({type(exc).__name__}); is radloop running there "
                                "(`radloop up`), and is --url right?") from None
        if r.status_code in (401, 403):
            raise ImportAborted(f"{method} {path.split('/cases/')[0]}... was refused ({r.status_code}): the token must "
                                "have the admin role (images are stored and labels imported as ground truth)")
        return r

    # -- images --------------------------------------------------------------------------------------------------
    def store(self, data: bytes) -> tuple[str | None, str | None]:
        """STOW-RS one instance: (stored SOP Instance UID, None) or (None, the refusal's reason)."""
        body, ctype = _multipart(data)
        for attempt in range(6):
            r = self._request("POST", "/dicomweb/studies", content=body,
                              headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
            if r.status_code == 503 and attempt < 5:  # storage busy: Retry-After, bounded
                time.sleep(min(float(r.headers.get("Retry-After") or 1), 5.0))
                continue
            break
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if r.status_code >= 500:
            raise ImportAborted(f"STOW-RS failed on the server ({r.status_code}); nothing more is sent")
        ok = (((doc or {}).get("00081199") or {}).get("Value") or []) if isinstance(doc, dict) else []
        if ok:
            return str(_first(ok[0], "00081155")), None
        failed = (((doc or {}).get("00081198") or {}).get("Value") or []) if isinstance(doc, dict) else []
        if failed:
            code, text = _first(failed[0], "00081197"), _first(failed[0], "00000902") or ""
            return None, (f"0x{int(code):04X} {text}".strip() if isinstance(code, int) else str(text or "refused"))
        detail = doc.get("detail") if isinstance(doc, dict) else r.text[:200]
        return None, f"HTTP {r.status_code} {detail}"

    # -- labels --------------------------------------------------------------------------------------------------
    def label(self, sop: str, label: str) -> Outcome:
        """PUT the label; a case not created yet (404) is retried until ``label_wait_s``."""
        deadline = time.monotonic() + self.label_wait_s
        while True:
            r = self._request("PUT", f"/verification/cases/{sop}/imported-label",
                              json={"label": label, "source": self.source})
            if r.status_code == 200:
                result = str(r.json().get("result"))
                return Outcome("unchanged" if result == "unchanged" else "labelled", label, stored=True)
            if r.status_code == 404 and time.monotonic() < deadline:
                time.sleep(RETRY_PAUSE_S)
                continue
            if r.status_code >= 500:
                raise ImportAborted(f"the verification service failed ({r.status_code}); nothing more is sent")
            try:
                detail = str(r.json().get("detail"))
            except ValueError:
                detail = r.text[:200]
            if r.status_code == 409:
                return Outcome("conflict", label, "already read by a radiologist", stored=True)
            if r.status_code == 404:
                return Outcome("rejected", label, f"the case did not appear within {self.label_wait_s:.0f} s "
                                                  "(is the verification worker running?)", stored=True)
            return Outcome("rejected", label, f"label refused ({r.status_code}: {detail[:120]})", stored=True)

    # -- one image, the run --------------------------------------------------------------------------------------
    def one(self, item: Item, state: dict[str, Any] | None) -> tuple[Outcome, str | None]:
        """Store (unless the journal has it) and return the outcome and the stored SOP UID."""
        sop = state.get("sop") if state else None
        if not sop:
            try:
                data = payload(item, self.source)
            except (OSError, ValueError) as exc:
                return Outcome("rejected", item.label, f"unreadable image ({type(exc).__name__})"), None
            sop, reason = self.store(data)
            if sop is None:
                return Outcome("rejected", item.label, reason), None
            self.journal.record(item.key, sop, None)
        return Outcome("stored", item.label, stored=True), sop

    def run(self, items: list[Item], summary: Summary, step: Callable[[Outcome], None], *,
            limit: int | None = None, batch: int | None = None) -> Summary:
        """Import ``items`` (those not done yet, at most ``limit``); ``step`` is called once per image."""
        started = time.monotonic()
        todo = []
        for it in items:
            st = self.journal.state(it)
            if st and st.get("label") == it.label:
                summary.already_done += 1
                continue
            todo.append((it, st))
        if limit is not None:
            todo = todo[:limit]
        summary.attempted = len(todo)
        size = batch or max(32, self.concurrency * 8)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="import") as pool:
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                stored = list(pool.map(lambda p: self.one(*p), chunk))
                labelled: list[tuple[Item, Outcome, str | None]] = []
                pending = [(it, sop) for (it, _), (o, sop) in zip(chunk, stored, strict=True) if sop]
                results = dict(zip([id(it) for it, _ in pending],
                                   pool.map(lambda p: self.label(p[1], p[0].label), pending), strict=True))
                for (it, st), (o, sop) in zip(chunk, stored, strict=True):
                    if sop and not (st and st.get("sop")):
                        summary.stored += 1
                    final = results.get(id(it), o)
                    labelled.append((it, final, sop))
                for it, o, sop in labelled:
                    if o.outcome in ("labelled", "unchanged") and sop:
                        self.journal.record(it.key, sop, it.label)
                        summary.labels[it.label] += 1
                    summary.outcomes[o.outcome] += 1
                    if o.reason:
                        summary.reasons[o.reason] += 1
                    step(o)
        summary.seconds = time.monotonic() - started
        return summary
