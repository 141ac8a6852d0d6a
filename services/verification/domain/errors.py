"""Errors of the verification domain; the API maps each to an HTTP status."""


class VerificationError(Exception):
    """Base error."""


class CaseNotFound(VerificationError):
    """404: no such case (or its instance was not stored yet)."""


class CaseConflict(VerificationError):
    """409: the case is claimed by someone else, already final, or changed concurrently."""


class InvalidRead(VerificationError):
    """422: the read cannot be accepted as given."""
