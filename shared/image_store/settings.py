"""The image-store settings (``RADLOOP_IMAGE_STORE`` and what the ``healthimaging`` store needs), declared once here and
mixed into the settings of the three services that read or write images: ingestion, the streaming gateway and triage.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from shared.settings import Settings

ImageStoreKind = Literal["radloop", "healthimaging"]

_DATASTORE_ID = re.compile(r"^[0-9a-z]{32}$")
_ROLE_ARN = re.compile(r"^arn:aws(-[^:]+)?:iam::[0-9]{12}:role/.+$")
_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()/-]*$")


class ImageStoreSettings(Settings):
    """Which image store holds frames and metadata (shared.image_store), and the HealthImaging parameters."""

    #: Where frames and metadata live: ``radloop`` (HTJ2K objects in the images bucket, the default) or
    #: ``healthimaging`` (an AWS HealthImaging data store; docs/healthimaging.md). QIDO always answers from radloop's
    #: index. Every service that reads or writes images must run with the same value.
    image_store: ImageStoreKind = "radloop"
    #: The HealthImaging data store id (32 lower-case letters and digits); required with ``image_store=healthimaging``.
    healthimaging_datastore_id: str = ""
    #: The bucket HealthImaging imports from and writes job output to; empty: the ingestion bucket of the topology.
    healthimaging_import_bucket: str = ""
    #: Key prefix (in ``healthimaging_import_bucket``) under which each import batch gets its own folder of P10 objects.
    healthimaging_import_prefix: str = "healthimaging/import/"
    #: Key prefix of the import jobs' output (job-output-manifest.json, SUCCESS/ and FAILURE/ manifests).
    healthimaging_output_prefix: str = "healthimaging/output/"
    #: The IAM role HealthImaging assumes to read the import prefix and write the output (StartDICOMImportJob's
    #: ``dataAccessRoleArn``); required with ``image_store=healthimaging``.
    healthimaging_import_role_arn: str = ""
    #: Instances one import job takes at most; a batch is started when it is full or ``healthimaging_batch_window_s``
    #: after its first instance, whichever comes first. At most 300: the batch's record (about 900 bytes per instance
    #: with 64-character UIDs) must stay under DynamoDB's 400 KB item limit.
    healthimaging_batch_size: int = Field(200, ge=1, le=300)
    #: Longest wait (seconds) between a batch's first instance and its StartDICOMImportJob.
    healthimaging_batch_window_s: float = Field(10.0, gt=0)
    #: Polling fallback (seconds) of GetDICOMImportJob for submitted jobs whose EventBridge event has not arrived.
    healthimaging_poll_interval_s: float = Field(30.0, gt=0)
    #: Import jobs started for one batch, the first included: after this many FAILED jobs, its instances become
    #: ``InstanceRejected``.
    healthimaging_job_attempts: int = Field(3, ge=1, le=10)

    @model_validator(mode="after")
    def _check_healthimaging(self) -> ImageStoreSettings:
        for name in ("healthimaging_import_prefix", "healthimaging_output_prefix"):
            value = getattr(self, name)
            if not value.endswith("/") or not _PREFIX.match(value) or value.startswith("/"):
                raise ValueError(f"{name}={value!r} must be an S3 key prefix ending in '/' (letters, digits, ! _ . * ' "
                                 "( ) / and -)")
        if self.image_store != "healthimaging":
            return self
        if not _DATASTORE_ID.match(self.healthimaging_datastore_id):
            raise ValueError(f"image_store=healthimaging needs RADLOOP_HEALTHIMAGING_DATASTORE_ID, a data store id of 32 "
                             f"lower-case letters and digits (got {self.healthimaging_datastore_id!r})")
        if not _ROLE_ARN.match(self.healthimaging_import_role_arn):
            raise ValueError("image_store=healthimaging needs RADLOOP_HEALTHIMAGING_IMPORT_ROLE_ARN, the ARN of the role "
                             f"HealthImaging imports with (got {self.healthimaging_import_role_arn!r})")
        return self

    @property
    def import_bucket(self) -> str:
        """The bucket of the import prefix and of the job output."""
        return self.healthimaging_import_bucket or self.topology.bucket("ingestion")
