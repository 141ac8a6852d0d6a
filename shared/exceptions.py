"""The base error of the shared runtime and its precise subclasses."""


class RadloopError(Exception):
    """Base class of every error radloop raises on purpose."""


class EventParseError(RadloopError):
    """A message or event detail could not be parsed; it will never succeed, so it goes to the DLQ."""


class PublishError(RadloopError):
    """PutEvents still failed for some entries after the retries."""


class IdempotencyError(RadloopError):
    """Base class of idempotency-store errors."""


class IdempotencyInProgressError(IdempotencyError):
    """Another worker holds a live INPROGRESS record for this key; retry after it finishes or expires."""


class IdempotencyPayloadMismatchError(IdempotencyError):
    """The same idempotency key arrived with a different payload."""


class InvalidUIDError(RadloopError, ValueError):
    """A DICOM UID does not match ``^[0-9]+(\\.[0-9]+)*$`` or is longer than 64 characters."""


class AuthError(RadloopError):
    """Authentication failed (401)."""


class ForbiddenError(RadloopError):
    """Authenticated, but the role does not allow the action (403)."""


class DomainError(RadloopError):
    """An error a use case raises on purpose, with the answer it deserves.

    ``status`` is the HTTP status, ``dicom_status`` the DICOM status (PS3.7 / PS3.18) where one applies, and the
    message is a full sentence for the caller. :func:`shared.service.build_app` maps every ``DomainError`` to a
    response in one place; subclasses set their defaults as class attributes.
    """

    status: int = 400
    dicom_status: int | None = None

    def __init__(self, message: str, *, status: int | None = None, dicom_status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if dicom_status is not None:
            self.dicom_status = dicom_status
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, object]:
        """The JSON answer: ``detail`` (the sentence), and ``dicom_status`` where one applies."""
        out: dict[str, object] = {"detail": str(self)}
        if self.dicom_status is not None:
            out["dicom_status"] = f"0x{self.dicom_status:04X}"
        return out


class NotFoundError(DomainError):
    """The thing asked for does not exist (404)."""

    status = 404


class ConflictError(DomainError):
    """The request conflicts with the current state (409)."""

    status = 409


class ConditionFailedError(RadloopError):
    """A DynamoDB conditional write found its condition false; ``item`` is the current item when it was returned."""

    def __init__(self, message: str = "conditional check failed", item: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.item = item
