"""Event models: frozen pydantic models, one per event, each with a schema version.

An event travels as an EventBridge entry whose ``detail-type`` is the model's ``name`` and whose ``detail`` is the
model's JSON. Every ``detail`` carries ``event_id`` (the idempotency key), ``occurred_at``, ``schema_version`` and
the W3C trace context, plus identifiers only (UIDs, storage keys, hashes): never patient names, patient IDs or any
other PHI. Patients appear only as ``patient_pseudo_id``, an HMAC of the patient ID (see :func:`pseudonymise`).

Parsing is strict: unknown fields, missing fields, wrong types and unknown ``detail-type`` values raise
:class:`EventParseError` with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import event_names as ev
from shared.exceptions import EventParseError
from shared.uids import validate_uid

SCHEMA_VERSION = 1


def _now() -> datetime:
    return datetime.now(UTC)


def pseudonymise(patient_id: str, key: str) -> str:
    """A stable, non-reversible pseudonym for a patient ID (HMAC-SHA256, 32 hex digits)."""
    return hmac.new(key.encode(), patient_id.encode(), hashlib.sha256).hexdigest()[:32]


class Event(BaseModel):
    """Fields every event detail carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str] = ""

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    occurred_at: datetime = Field(default_factory=_now)
    schema_version: int = SCHEMA_VERSION
    traceparent: str | None = None
    tracestate: str | None = None

    def to_detail(self) -> str:
        return self.model_dump_json()

    def with_trace(self, carrier: dict[str, str]) -> Event:
        return self.model_copy(update={"traceparent": carrier.get("traceparent"), "tracestate": carrier.get("tracestate")})


class _InstanceRef(Event):
    study_uid: str
    series_uid: str
    sop_uid: str

    @field_validator("study_uid", "series_uid", "sop_uid")
    @classmethod
    def _valid_uid(cls, v: str) -> str:
        return validate_uid(v)


class InstanceStored(_InstanceRef):
    name: ClassVar[str] = ev.INSTANCE_STORED

    sop_class_uid: str
    modality: str
    body_part: str | None = None
    view_position: str | None = None
    #: 0 for the non-image objects of :mod:`shared.dicom.sop_classes` (structured reports: no frames, no pixels)
    number_of_frames: int = Field(ge=0)
    rows: int = Field(ge=0)
    columns: int = Field(ge=0)
    #: ``dicom/{study}/{series}/{sop}.dcm``
    original_key: str
    #: ``frames/{study}/{series}/{sop}`` (frames are ``{n}.jph`` below it, n from 1)
    frames_prefix: str
    metadata_key: str
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    htj2k_bytes: int = Field(ge=0)
    patient_pseudo_id: str
    source: Literal["stow", "dimse", "s3"]
    deidentified: bool = False
    #: With ``image_store=healthimaging``: the HealthImaging image set holding the instance, and its image frame ids
    #: (frame 1 first). Absent with the default store, whose frames are under ``frames_prefix``.
    image_set_id: str | None = Field(default=None, pattern=r"^[0-9a-z]{32}$")
    frame_ids: tuple[str, ...] = ()
    #: The HealthImaging data store holding ``image_set_id`` (with ``image_store=healthimaging`` only).
    datastore_id: str | None = Field(default=None, pattern=r"^[0-9a-z]{32}$")


class InstanceRejected(Event):
    name: ClassVar[str] = ev.INSTANCE_REJECTED

    source: Literal["stow", "dimse", "s3"]
    #: DICOM failure reason (e.g. 0xC000) as an integer.
    failure_reason: int
    reason: str = Field(max_length=500)
    sop_uid: str | None = None
    #: SHA-256 (hex) of the S3-drop object's key, to find the object: never the key itself, which a hospital may
    #: have named after the patient (a review found one in an event).
    object_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    content_sha256: str | None = None


class InstanceScored(_InstanceRef):
    name: ClassVar[str] = ev.INSTANCE_SCORED

    status: Literal["scored", "unscored", "not_applicable"]
    probability: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold: float | None = None
    priority: Literal["urgent", "routine"] = "routine"
    model_version: int | None = None
    reason: str | None = None
    heatmap_key: str | None = None
    patient_pseudo_id: str | None = None


class ImageVerified(_InstanceRef):
    name: ClassVar[str] = ev.IMAGE_VERIFIED

    case_id: str
    label: Literal["pneumonia", "normal", "indeterminate"]
    label_version: int = Field(ge=1)
    #: how the label became final (``imported``: a public dataset's label, reader ``dataset:<source>``)
    resolution: Literal["single", "agreement", "adjudicated", "amended", "imported"]
    reader: str
    patient_pseudo_id: str
    frame_key: str
    model_version: int | None = None
    probability: float | None = None
    #: With ``image_store=healthimaging``: where frame 1 is (data store, image set, image frame id), so that the
    #: training pipeline reads it from HealthImaging (``frame_key`` then names no object).
    datastore_id: str | None = Field(default=None, pattern=r"^[0-9a-z]{32}$")
    image_set_id: str | None = Field(default=None, pattern=r"^[0-9a-z]{32}$")
    frame_id: str | None = Field(default=None, pattern=r"^[0-9a-z]{32}$")


class TrainingStarted(Event):
    name: ClassVar[str] = ev.TRAINING_STARTED

    run_id: str
    manifest_sha256: str
    manifest_uri: str
    label_count: int
    trigger: Literal["policy", "schedule", "manual", "degraded", "drift"]
    champion_version: int | None = None


class TrainingCompleted(Event):
    name: ClassVar[str] = ev.TRAINING_COMPLETED

    run_id: str
    status: Literal["Succeeded", "Failed", "Stopped"]
    manifest_sha256: str
    manifest_uri: str
    metrics: dict[str, float] = Field(default_factory=dict)
    model_artifact_uri: str | None = None
    model_package_arn: str | None = None
    evaluation_uri: str | None = None
    pipeline_execution: str | None = None
    failure_reason: str | None = None
    champion_version: int | None = None


class ModelRegistered(Event):
    name: ClassVar[str] = ev.MODEL_REGISTERED

    version: int
    model_package_arn: str
    run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    decision: Literal["approved", "pending", "rejected"]
    reason: str


class ModelApproved(Event):
    name: ClassVar[str] = ev.MODEL_APPROVED

    version: int
    model_package_arn: str
    model_artifact_uri: str
    threshold: float = Field(ge=0.0, le=1.0)
    approved_by: str
    reason: str
    previous_version: int | None = None
    rollback: bool = False


class ModelPerformanceDegraded(Event):
    name: ClassVar[str] = ev.MODEL_PERFORMANCE_DEGRADED

    model_version: int
    metric: str
    value: float
    floor: float
    sample_size: int


class DriftDetected(Event):
    """A site's images or the champion's scores no longer look like the model's training data (shared.drift).

    No PHI: the site is a pseudonymous key (a hash of the institution and device), never a name."""

    name: ClassVar[str] = ev.DRIFT_DETECTED

    model_version: int
    site: str = Field(pattern=r"^site-[0-9a-f]{10}$")
    modality: str = Field(max_length=16)
    #: one of shared.drift.FEATURES: ``score`` is prediction drift, the others input drift
    feature: str = Field(max_length=32)
    psi: float
    threshold: float
    window_images: int = Field(ge=1)


class S3ObjectCreated(BaseModel):
    """The ``detail`` of S3's own ``Object Created`` EventBridge notification (the fields radloop reads)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    name: ClassVar[str] = ev.S3_OBJECT_CREATED

    bucket: dict[str, Any]
    object: dict[str, Any]

    @property
    def bucket_name(self) -> str:
        return str(self.bucket["name"])

    @property
    def key(self) -> str:
        return str(self.object["key"])


class ImportJobChanged(BaseModel):
    """The ``detail`` of AWS HealthImaging's import-job notification (the fields radloop reads)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    name: ClassVar[str] = ""

    datastoreId: str  # HealthImaging's field names
    jobId: str
    jobStatus: str


class ImportJobCompleted(ImportJobChanged):
    name: ClassVar[str] = ev.IMPORT_JOB_COMPLETED


class ImportJobFailed(ImportJobChanged):
    name: ClassVar[str] = ev.IMPORT_JOB_FAILED


#: AWS services' own notifications that radloop consumes, by ``detail-type``.
AWS_EVENT_TYPES: dict[str, type[BaseModel]] = {
    ev.S3_OBJECT_CREATED: S3ObjectCreated,
    ev.IMPORT_JOB_COMPLETED: ImportJobCompleted,
    ev.IMPORT_JOB_FAILED: ImportJobFailed,
}


EVENT_TYPES: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (
        InstanceStored,
        InstanceRejected,
        InstanceScored,
        ImageVerified,
        TrainingStarted,
        TrainingCompleted,
        ModelRegistered,
        ModelApproved,
        ModelPerformanceDegraded,
        DriftDetected,
    )
}
assert set(EVENT_TYPES) == set(ev.ALL), "every event name needs a model"


class Envelope(BaseModel):
    """An EventBridge envelope as it arrives in an SQS body (moto omits ``account``)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    id: str
    detail_type: str = Field(alias="detail-type")
    source: str
    time: str | None = None
    detail: dict[str, Any]


def parse_envelope(body: str | bytes) -> Envelope:
    """Parse an SQS body holding an EventBridge envelope, or raise :class:`EventParseError`."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventParseError(f"message body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise EventParseError(f"message body is a JSON {type(raw).__name__}, expected an EventBridge envelope object")
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        raise EventParseError(f"message body is not an EventBridge envelope: {_errors(exc)}") from None


def parse_detail(detail_type: str, detail: dict[str, Any]) -> Event | S3ObjectCreated | ImportJobChanged:
    """Parse a ``detail`` into its model, or raise :class:`EventParseError` naming what is wrong."""
    if detail_type in AWS_EVENT_TYPES:
        model: type[BaseModel] = AWS_EVENT_TYPES[detail_type]
    else:
        try:
            model = EVENT_TYPES[detail_type]
        except KeyError:
            raise EventParseError(f"unknown detail-type {detail_type!r}; expected one of {sorted(EVENT_TYPES)}") from None
    try:
        return model.model_validate(detail)  # type: ignore[return-value]
    except ValidationError as exc:
        raise EventParseError(f"{detail_type} detail is invalid: {_errors(exc)}") from None


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
