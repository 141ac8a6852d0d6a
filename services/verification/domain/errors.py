"""Errors of the verification domain; each carries its HTTP status (mapped to a response by shared code)."""

from __future__ import annotations

from shared.exceptions import ConflictError, DomainError, NotFoundError


class VerificationError(DomainError):
    """Base error."""


class CaseNotFound(VerificationError, NotFoundError):
    """404: no such case (or its instance was not stored yet)."""

    status = 404


class CaseConflict(VerificationError, ConflictError):
    """409: the case is claimed by someone else, already final, or changed concurrently."""

    status = 409


class InvalidRead(VerificationError):
    """422: the read cannot be accepted as given."""

    status = 422


class InvalidQuery(VerificationError):
    """422: a worklist query cannot be answered as given (e.g. a cursor this worklist did not return)."""

    status = 422
