"""DICOM UID validation and generation (PS3.5 §9).

UIDs become S3 keys and DynamoDB keys, so they are validated before use: only digits and dots, no empty or
leading-zero components, at most 64 characters. ``../`` or any other path syntax can never get through.
"""

from __future__ import annotations

import re
import uuid

from shared.exceptions import InvalidUIDError

_UID_RE = re.compile(r"\A(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")
_LOOSE_RE = re.compile(r"\A[0-9]+(\.[0-9]+)*\Z")

#: The UID root for UIDs radloop generates: 2.25 (UUID-derived, PS3.5 §B.2).
UUID_ROOT = "2.25"


def validate_uid(value: object, *, what: str = "UID", strict: bool = False) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUIDError` with the reason.

    ``strict`` also refuses components with leading zeros, which the standard forbids but some modalities emit;
    they are harmless as keys, so reading is tolerant by default.
    """
    if not isinstance(value, str):
        raise InvalidUIDError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidUIDError(f"{what} is empty")
    if len(value) > 64:
        raise InvalidUIDError(f"{what} {value[:70]!r} is {len(value)} characters long; at most 64 are allowed")
    if not (_UID_RE if strict else _LOOSE_RE).match(value):
        raise InvalidUIDError(f"{what} {value!r} must be digits separated by single dots (e.g. 1.2.840.10008)")
    return value


def is_valid_uid(value: object) -> bool:
    try:
        validate_uid(value)
    except InvalidUIDError:
        return False
    return True


def generate_uid() -> str:
    """A fresh UID under the 2.25 root."""
    return f"{UUID_ROOT}.{uuid.uuid4().int}"
