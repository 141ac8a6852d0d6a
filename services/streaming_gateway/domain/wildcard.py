"""DICOM wildcard matching: :mod:`shared.query.wildcard` (shared with C-FIND); re-exported for the gateway."""

from shared.query.wildcard import Wildcard, fold

__all__ = ["Wildcard", "fold"]
