"""DICOM failure reasons (PS3.4 C-STORE statuses, PS3.18 STOW-RS ``FailureReason``) and the rejection error."""

from __future__ import annotations

#: Refused: out of resources (too large, inflates too far, decoded pixels over the bound).
OUT_OF_RESOURCES = 0xA700
#: Error: data set does not match SOP class (missing type-1 attributes, no pixel data, short pixel data).
DATASET_MISMATCH = 0xA900
#: Error: cannot understand (not DICOM, malformed encoding, invalid UID, undecodable pixels).
CANNOT_UNDERSTAND = 0xC000
#: Duplicate SOP instance: the SOP Instance UID is already stored with a different payload.
DUPLICATE_SOP_INSTANCE = 0x0111
#: Refused: SOP class not supported.
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: Warning (PS3.18): coercion of data elements; used for "already stored, acknowledged again".
SUCCESS = 0x0000

REASON_NAMES = {
    OUT_OF_RESOURCES: "out of resources",
    DATASET_MISMATCH: "data set does not match SOP class",
    CANNOT_UNDERSTAND: "cannot understand",
    DUPLICATE_SOP_INSTANCE: "duplicate SOP instance",
    SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
}


class DicomRejection(Exception):
    """An instance is refused. ``reason`` is a full sentence for the sender (it may quote values from the sender's
    own data); ``kind`` is a short, PHI-free label safe for logs, metrics and events."""

    def __init__(
        self,
        failure_reason: int,
        reason: str,
        *,
        kind: str,
        sop_uid: str | None = None,
        sop_class_uid: str | None = None,
        study_uid: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.failure_reason = failure_reason
        self.reason = reason
        self.kind = kind
        self.sop_uid = sop_uid
        self.sop_class_uid = sop_class_uid
        self.study_uid = study_uid

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Rejections cross the process-pool boundary; keep the keyword arguments when pickled.
        return (_rebuild, (self.failure_reason, self.reason, self.kind, self.sop_uid, self.sop_class_uid,
                           self.study_uid))


def _rebuild(code: int, reason: str, kind: str, sop: str | None, cls: str | None, study: str | None) -> DicomRejection:
    return DicomRejection(code, reason, kind=kind, sop_uid=sop, sop_class_uid=cls, study_uid=study)


class TransientFailure(DicomRejection):
    """Not the instance's fault: storage was unavailable. Answered as 0xA700 (retry later); never quarantined or
    moved to a rejected folder, and queue-driven sources retry it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_transient, (self.reason, self.kind, self.sop_uid))


def _rebuild_transient(reason: str, kind: str, sop: str | None) -> TransientFailure:
    return TransientFailure(OUT_OF_RESOURCES, reason, kind=kind, sop_uid=sop)
