"""Errors of the registry; each carries its HTTP status (mapped to a response once, by :mod:`shared.service`)."""

from __future__ import annotations

from shared.exceptions import ConflictError, DomainError, NotFoundError


class RegistryError(DomainError):
    """Base error of the registry (400)."""


class UnknownVersionError(RegistryError, NotFoundError):
    """404: no such model version."""

    status = 404


class DecisionConflict(RegistryError, ConflictError):
    """409: the decision contradicts the version's state (rejected, already approved, the champion) or the
    champion changed while it was being made."""

    status = 409
