"""Deterministic UIDs for derived objects.

A derived object's UIDs are a pure function of what it is derived from (source SOP Instance UID, kind of object,
model version or label version), so regenerating it after a redelivered event, a crash or a replay yields the very
same SOP Instance UID: ingestion then recognises it (same UID and bytes: duplicate; the worker checks the index
first), and a PACS that already holds it sees the same instance again rather than a second copy.

UIDs use the ``2.25`` root (PS3.5 §B.2): ``2.25.`` followed by a 128-bit integer, here the first 128 bits of a
SHA-256 of the inputs, so they are at most 44 characters and never collide with the sender's own UIDs.
"""

from __future__ import annotations

import hashlib

from shared.uids import validate_uid


def derived_uid(*parts: str | int) -> str:
    """``2.25.<128-bit integer>`` from a SHA-256 of ``parts`` (joined with an unambiguous separator)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return validate_uid(f"2.25.{int.from_bytes(digest[:16], 'big')}")
