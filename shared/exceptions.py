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
