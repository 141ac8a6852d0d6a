"""Structured JSON logs carrying ``trace_id`` and ``span_id``.

Rule: nothing logged may carry patient names or IDs. Log identifiers (UIDs, keys, hashes) and reasons only. As a
second line of defence, :class:`PhiFilter` drops ``extra`` fields whose names are known PHI attributes.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from shared.log_filters import QuotedValueFilter, silence_quoting_warnings
from shared.telemetry import current_ids

#: Attribute names that must never reach a log record as structured fields.
PHI_FIELDS = frozenset(
    {"PatientName", "PatientID", "patient_name", "patient_id", "PatientBirthDate", "OtherPatientIDs",
     "PatientAddress", "ReferringPhysicianName", "AccessionNumber", "accession_number"}
)
_STD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class PhiFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key in list(record.__dict__):
            if key in PHI_FIELDS:
                record.__dict__[key] = "[redacted]"
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = current_ids()
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            "trace_id": trace_id,
            "span_id": span_id,
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stdout as JSON lines (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_radloop", False) or getattr(h, "_radloop_cli", False):  # a service's, or the CLI's
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(PhiFilter())
    handler.addFilter(QuotedValueFilter())
    handler._radloop = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "aiobotocore", "urllib3", "pynetdicom", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Libraries whose warnings quote the values they read: their errors only (pydicom sets its own logger's level
    # when imported, so the handler filters), and no warnings module output from them (shared/log_filters.py).
    silence_quoting_warnings()
