"""The image store: one interface (:class:`ImageStore`) that ingestion, the streaming gateway and triage use, with two
implementations chosen by ``RADLOOP_IMAGE_STORE`` (:func:`shared.image_store.factory.open_image_store`):

- ``radloop`` (:mod:`shared.image_store.radloop`, the default): HTJ2K Lossless RPCL frames, DICOM JSON and the
  original object in the images bucket, at the keys of :mod:`shared.storage`. Storing is synchronous: when
  :meth:`ImageStore.store_instance` returns, the instance is durable and ready to index.
- ``healthimaging`` (:mod:`shared.image_store.healthimaging`): an AWS HealthImaging data store. Storing stages the P10
  object under the import prefix and HealthImaging imports it in batches (StartDICOMImportJob); the store reports each
  finished import (:class:`ImportedInstance`, :class:`FailedImport`) and the caller indexes and announces it.

Readers name an instance by its UIDs only; a store that needs more (HealthImaging's image set and frame ids) finds it
in radloop's instance index itself. None of the callers knows which store it talks to.

This module is pure (types and the protocol, no AWS SDK), so pure domain code may use its types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.exceptions import RadloopError


class ImageStoreError(RadloopError):
    """Base class of image-store errors."""


class ImageNotFound(ImageStoreError):
    """The frame, metadata or object does not exist in the store."""


class ImageStoreUnavailable(ImageStoreError):
    """The store failed in a way a retry may fix (throttling, a network error, an outage)."""


@dataclass(frozen=True)
class NewInstance:
    """One received instance, prepared by ingestion: what a store keeps of it.

    ``frames`` are radloop's HTJ2K codestreams (frame 1 first); a store that encodes frames itself (HealthImaging)
    ignores them and keeps ``p10`` (the object as it will be stored: de-identified when that ran).
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    content_sha256: str
    p10: bytes
    dicom_json: str
    frames: tuple[bytes, ...] = ()
    #: extra ``(key, body, content type)`` objects stored beside the frames (a large frame-offset table)
    extra_objects: tuple[tuple[str, bytes, str], ...] = ()
    #: identifiers the store keeps with a staged instance, to build its index record and event later (no PHI)
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreReceipt:
    """What :meth:`ImageStore.store_instance` did: ``ready`` means durable and retrievable now (index it now);
    otherwise the instance is durably *staged* and :meth:`ImageStore.poll_imports` reports it later."""

    ready: bool
    #: where the staged object lies (``s3://bucket/key``); empty when ``ready``
    staged_at: str = ""


@dataclass(frozen=True)
class ImportedInstance:
    """An instance the store finished importing: its DICOM JSON as the store holds it, and the store's ids."""

    study_uid: str
    series_uid: str
    sop_uid: str
    dicom_json: dict[str, Any]
    image_set_id: str
    frame_ids: tuple[str, ...]
    stored_transfer_syntax_uid: str
    #: what ingestion kept when it staged the instance (:attr:`NewInstance.attributes`)
    attributes: dict[str, Any]
    #: the HealthImaging data store that holds ``image_set_id``
    datastore_id: str = ""


@dataclass(frozen=True)
class FailedImport:
    """An instance the store refused while importing, with a PHI-free reason (the store's error type)."""

    sop_uid: str
    reason: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ImportReport:
    """What one finished import job did: the instances it imported and those it refused."""

    job_id: str
    imported: tuple[ImportedInstance, ...] = ()
    failed: tuple[FailedImport, ...] = ()


class ImageStore(Protocol):
    """Frames, metadata and originals of stored instances, whatever holds them."""

    async def store_instance(self, inst: NewInstance) -> StoreReceipt:
        """Keep one instance durably; raise on any failure (nothing may be acknowledged then)."""
        ...

    async def read_frame(self, study: str, series: str, sop: str, number: int) -> bytes:
        """Frame ``number`` (from 1) as an HTJ2K codestream. :class:`ImageNotFound`, :class:`ImageStoreUnavailable`."""
        ...

    async def read_metadata(self, study: str, series: str, sop: str) -> dict[str, Any]:
        """The instance's DICOM JSON (PS3.18 F.2) without bulk data. :class:`ImageNotFound` when absent."""
        ...

    async def read_original(self, study: str, series: str, sop: str) -> bytes:
        """The instance as a DICOM P10 object. :class:`ImageNotFound` when the store keeps none."""
        ...

    async def original_object(self, study: str, series: str, sop: str) -> tuple[str, str]:
        """(bucket, key) of the S3 object :meth:`read_original` reads (a batch transform reads it in place).
        :class:`ImageNotFound` when the store keeps none."""
        ...

    async def submit_due(self, *, force: bool = False) -> int:
        """Start the imports that are due (all staged ones with ``force``); returns how many started."""
        ...

    async def poll_imports(self) -> list[ImportReport]:
        """Finished import jobs not acknowledged yet (each is reported again until :meth:`acknowledge_imports`)."""
        ...

    async def import_job_changed(self, job_id: str) -> ImportReport | None:
        """An import job's status changed (its event arrived): its report when it finished, else None."""
        ...

    async def acknowledge_imports(self, job_id: str) -> None:
        """The caller indexed and announced everything a finished job reported: forget the job."""
        ...
