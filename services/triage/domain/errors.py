"""Errors of the triage use cases; each carries its HTTP status (mapped to a response by shared code)."""

from __future__ import annotations

from shared.exceptions import ConflictError, DomainError, NotFoundError


class TriageError(DomainError):
    """Base error of the triage service."""


class InvalidInstance(TriageError):
    """422: a UID is malformed, or the stored frame cannot be decoded."""

    status = 422


class NoModelLoaded(TriageError, ConflictError):
    """409: the request needs a model, and no approved model is loaded."""

    status = 409


class FrameNotFound(TriageError, NotFoundError):
    """404: the instance has no stored frame 1."""

    status = 404
