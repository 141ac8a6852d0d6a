"""The case record and its pure state transitions: stored/scored events, claims, reads, labels.

A case is one image (case id = SOP Instance UID). Its workflow ``status`` (the worklist index key) is:

- ``open``: needs reads (unread, or in progress while a reader holds a live lease);
- ``adjudication``: double-read mode, the two readers disagree; the next other radiologist's read is final;
- ``final``: a final label exists (it may still be amended, which creates a new label version).

A case created by ``InstanceScored`` before its ``InstanceStored`` has no ``status`` yet, so it is absent from the
worklist index (a sparse index) and invisible to the API until the instance is stored.

Every function here is pure: it takes the current record (a dict) and returns the new one plus what to append and
publish, so the storage layer can apply the whole change atomically (one transaction, optimistic concurrency).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import storage
from shared.events import ImageVerified, InstanceScored, InstanceStored

LABELS = ("pneumonia", "normal", "indeterminate")
OPEN, ADJUDICATION, FINAL = "open", "adjudication", "final"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def priority_sk(case: dict[str, Any]) -> str:
    """Worklist sort key (ascending): priority, then probability (highest first), then arrival, then id.

    ``urgent`` (the model's positives) come first. Routine images follow by falling probability; images without a
    probability (no approved model yet, not applicable, not scored yet) come last in arrival order, so with no model the
    worklist is simply first come, first served.
    """
    score = case.get("score") or {}
    rank = 0 if score.get("priority") == "urgent" else 1
    p = score.get("probability")
    inv = f"{1.0 - float(p):.6f}" if p is not None and score.get("status") == "scored" else "9"
    return f"{rank}#{inv}#{case.get('arrived_at', '')}#{case['case_id']}"


def apply_stored(case: dict[str, Any] | None, e: InstanceStored, *, mode: str) -> dict[str, Any]:
    """The record after ``InstanceStored`` (creating it, or completing one that a score created first)."""
    c: dict[str, Any] = copy.deepcopy(case) if case else {"case_id": e.sop_uid}
    c.update({
        "study_uid": e.study_uid, "series_uid": e.series_uid, "sop_uid": e.sop_uid,
        "modality": e.modality, "body_part": e.body_part or "", "patient_pseudo_id": e.patient_pseudo_id,
        "frame_key": storage.frame_key(e.study_uid, e.series_uid, e.sop_uid, 1),
        "metadata_key": e.metadata_key, "stored": True,
    })
    if e.image_set_id and e.frame_ids and e.datastore_id:  # image_store=healthimaging: where frame 1 really is
        c.update({"datastore_id": e.datastore_id, "image_set_id": e.image_set_id, "frame_id": e.frame_ids[0]})
    c.setdefault("arrived_at", e.occurred_at.astimezone(UTC).isoformat(timespec="milliseconds"))
    c.setdefault("status", OPEN)
    c.setdefault("mode", mode)
    c.setdefault("reads", {})
    c.setdefault("readers", [])
    c.setdefault("read_seq", 0)
    c.setdefault("label_version", 0)
    c["priority_sk"] = priority_sk(c)
    return c


def apply_scored(case: dict[str, Any] | None, e: InstanceScored) -> dict[str, Any] | None:
    """The record after ``InstanceScored``; None when it is older than the score already held (no change)."""
    c: dict[str, Any] = copy.deepcopy(case) if case else {"case_id": e.sop_uid, "study_uid": e.study_uid,
                                                          "series_uid": e.series_uid, "sop_uid": e.sop_uid}
    at = e.occurred_at.astimezone(UTC).isoformat(timespec="microseconds")
    old = c.get("score")
    if old and old.get("event_at", "") > at:
        return None
    c["score"] = {"status": e.status, "probability": e.probability, "threshold": e.threshold,
                  "priority": e.priority, "model_version": e.model_version, "reason": e.reason,
                  "heatmap_key": e.heatmap_key, "event_at": at}
    if c.get("stored"):
        c["priority_sk"] = priority_sk(c)
    return c


# -- leases --------------------------------------------------------------------------------------------------------
def lease_holder(case: dict[str, Any], now: float) -> str | None:
    """Who holds a live lease on the case (None when unclaimed or expired: an expired lease returns the case)."""
    owner = case.get("lease_owner")
    if owner and float(case.get("lease_expires_at") or 0) > now:
        return str(owner)
    return None


def may_amend(case: dict[str, Any], reader: str) -> bool:
    """Whether ``reader`` may amend the case's final label: the adjudicator of an adjudicated label, else its
    reader(s). False while the case has no final label."""
    final = case.get("final") or {}
    deciders = [final.get("decided_by")] if final.get("resolution") == "adjudicated" else final.get("readers", [])
    return reader in (deciders or [])


def reads_visible_to(case: dict[str, Any], subject: str, roles: tuple[str, ...], can_verify: bool) -> bool:
    """Whether a caller sees other readers' reads of the case.

    In double-read mode the reads stay blind until the case is decided, so the two reads are independent, except
    from an admin and from the adjudicator: while the case is in adjudication, a radiologist who is not one of its
    readers sees both reads, to decide between them.
    """
    if case.get("mode") != "double" or case.get("status") == FINAL or "admin" in roles:
        return True
    return case.get("status") == ADJUDICATION and can_verify and subject not in (case.get("readers") or [])


def display_status(case: dict[str, Any], now: float) -> str:
    """unread | in_progress | adjudication | final, as the worklist shows it."""
    if case.get("status") == OPEN:
        return "in_progress" if lease_holder(case, now) else "unread"
    return str(case.get("status"))


# -- reads ---------------------------------------------------------------------------------------------------------
@dataclass
class ReadOutcome:
    """What one read changes: the new case, the rows to append, the events to publish, the API answer."""

    case: dict[str, Any]
    appends: list[dict[str, Any]] = field(default_factory=list)
    events: list[ImageVerified] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)


class ReadRejected(Exception):
    """The read is not allowed in the case's state; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _final_label(c: dict[str, Any], label: str, resolution: str, readers: list[str], at: str,
                 decided_by: str, out: ReadOutcome) -> None:
    version = int(c.get("label_version", 0)) + 1
    c["label_version"] = version
    c["status"] = FINAL
    c["final"] = {"label": label, "version": version, "resolution": resolution, "readers": readers, "at": at,
                  "excluded": label == "indeterminate", "decided_by": decided_by}
    out.appends.append({"label_sk": f"label#{version:06d}", "kind": "label", "label": label, "version": version,
                        "resolution": resolution, "readers": readers, "at": at,
                        "excluded": label == "indeterminate", "decided_by": decided_by})
    score = c.get("score") or {}
    mv = score.get("model_version") if score.get("status") == "scored" else None
    out.events.append(ImageVerified(
        event_id=f"verified-{c['case_id']}-v{version}",
        study_uid=c["study_uid"], series_uid=c["series_uid"], sop_uid=c["sop_uid"], case_id=c["case_id"],
        label=label, label_version=version, resolution=resolution, reader=decided_by,  # type: ignore[arg-type]
        patient_pseudo_id=c["patient_pseudo_id"], frame_key=c["frame_key"],
        model_version=int(mv) if mv is not None else None,
        probability=float(score["probability"]) if mv is not None and score.get("probability") is not None else None,
        datastore_id=c.get("datastore_id"), image_set_id=c.get("image_set_id"), frame_id=c.get("frame_id"),
    ))


def apply_read(case: dict[str, Any], reader: str, label: str, confidence: float | None, comment: str | None,
               *, now: float, at: str | None = None) -> ReadOutcome:
    """Apply one radiologist's read (see the module docstring and docs/verification.md for the rules).

    Raises :class:`ReadRejected` (409) when another reader holds the lease, when the case is final and the caller is
    not the reader whose read decided it, or when a double reader tries to adjudicate their own disagreement.
    """
    if label not in LABELS:
        raise ReadRejected(422, f"label {label!r} is not one of {', '.join(LABELS)}")
    holder = lease_holder(case, now)
    if holder is not None and holder != reader:
        raise ReadRejected(409, f"case {case['case_id']} is claimed by another reader until its lease expires")
    at = at or now_iso()
    c = copy.deepcopy(case)
    out = ReadOutcome(case=c)
    status, mode = c.get("status"), c.get("mode", "single")
    readers: list[str] = list(c.get("readers") or [])
    reads: dict[str, Any] = dict(c.get("reads") or {})
    previous = reads.get(reader)

    if status == FINAL:
        if not may_amend(c, reader):
            raise ReadRejected(409, f"case {c['case_id']} is final; only the reader(s) whose read made it final "
                                    "may amend it")
        final = c.get("final") or {}
        if (previous is not None and previous.get("label") == label == final.get("label")
                and previous.get("confidence") == confidence):
            # The same read again (a retry whose first attempt was recorded, but whose process died before its
            # Idempotency-Key record was completed): it changes nothing, so it records nothing and publishes no
            # second ImageVerified (found by the 2,000-image chaos run, docs/reliability.md). Also when the other
            # reader's agreement made the case final meanwhile (double reading; it became an amendment and a
            # second label version: found by a review).
            out.response = {"case_id": c["case_id"], "read_no": previous.get("read_no"), "read_kind": "repeat",
                            "status": FINAL, "label_version": final.get("version"), "final_label": final.get("label")}
            return out
        kind = "amendment"
    elif previous is not None and previous.get("label") == label and previous.get("confidence") == confidence:
        # The same read again on a case still open (the second reader has not read) or waiting for its adjudicator
        # (the readers disagreed meanwhile): a retry, not an amendment (the latter found by a review, session 22).
        out.response = {"case_id": c["case_id"], "read_no": previous.get("read_no"), "read_kind": "repeat",
                        "status": status, "label_version": None, "final_label": None}
        return out
    elif status == ADJUDICATION:
        kind = "amendment" if reader in readers else "adjudication"
    elif previous is not None:
        kind = "amendment"
    else:
        kind = "read"

    seq = int(c.get("read_seq", 0)) + 1
    c["read_seq"] = seq
    out.appends.append({"label_sk": f"read#{seq:06d}", "kind": "read", "read_kind": kind, "reader": reader,
                        "label": label, "confidence": confidence, "comment": comment or "", "at": at,
                        "read_no": seq})
    reads[reader] = {"label": label, "confidence": confidence, "at": at, "read_no": seq}
    if kind == "read" and reader not in readers:
        readers.append(reader)
    if kind == "adjudication":
        c["adjudicator"] = reader
    c["reads"], c["readers"] = reads, readers

    if status == FINAL:
        final = c["final"]
        if len(final.get("readers", [])) == 2 and final.get("resolution") != "adjudicated":
            other = next((r for r in final["readers"] if r != reader), None)
            if other is not None and reads[other]["label"] != label:
                # One of two agreeing readers changed their mind: the disagreement needs an adjudicator. The last
                # final version stays the one that counts until then.
                c["status"] = ADJUDICATION
                c["adjudicator"] = None
            else:
                _final_label(c, label, "amended", final["readers"], at, reader, out)
        else:
            _final_label(c, label, "amended", final.get("readers", [reader]), at, reader, out)
    elif kind == "adjudication":
        _final_label(c, label, "adjudicated", readers, at, reader, out)
    elif mode == "single":
        _final_label(c, label, "single", [reader], at, reader, out)
    elif len(readers) >= 2:
        a, b = reads[readers[0]]["label"], reads[readers[1]]["label"]
        if "paired_reads" not in c:  # the two independent reads, for reader agreement (kappa)
            c["paired_reads"] = [a, b]
        if a == b:
            _final_label(c, label, "agreement", readers[:2], at, reader, out)
        else:
            c["status"] = ADJUDICATION
    if c.get("lease_owner") == reader:
        c.pop("lease_owner", None)
        c.pop("lease_expires_at", None)
    c["priority_sk"] = priority_sk(c)
    out.response = {"case_id": c["case_id"], "read_no": seq, "read_kind": kind, "status": c["status"],
                    "label_version": c["final"]["version"] if c.get("final") and out.events else None,
                    "final_label": c["final"]["label"] if c.get("final") else None}
    return out
