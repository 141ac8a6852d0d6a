"""HTTP errors of ingestion's STOW-RS requests (a request refused as a whole; per-instance refusals are
:class:`~shared.dicom.errors.DicomRejection` answered in the DICOM store response)."""

from __future__ import annotations

from shared.exceptions import DomainError


class MalformedRequestError(DomainError):
    """The multipart body or a path UID is malformed (400)."""

    status = 400


class RequestTooLargeError(DomainError):
    """The request body, or one part of it, exceeds its cap (413)."""

    status = 413


class UnsupportedMediaTypeError(DomainError):
    """The request is not ``multipart/related; type="application/dicom"`` (415)."""

    status = 415
