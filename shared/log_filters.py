"""Log filters every radloop process applies, services and the operator's CLI alike (no dependencies beyond the
standard library, so the lean CLI install can use them)."""

from __future__ import annotations

import logging
import warnings

#: Libraries whose warnings quote the values they read ("Invalid value for VR UI: '<what the sender put>'",
#: "Non-conformant 'Affected SOP Instance UID' value '...'"): a sender may put a patient ID or name anywhere (a
#: review found both, in service logs and on the CLI's stderr), so only their errors are logged.
QUOTING_LIBRARIES = ("pydicom", "pynetdicom")


class QuotedValueFilter(logging.Filter):
    """Drops the records of :data:`QUOTING_LIBRARIES` below ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.split(".", 1)[0] in QUOTING_LIBRARIES and record.levelno < logging.ERROR)


def silence_quoting_warnings() -> None:
    """No ``warnings`` output from :data:`QUOTING_LIBRARIES` (pydicom warns through both ``warnings`` and its
    logger)."""
    for name in QUOTING_LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")


def setup_cli_logging() -> None:
    """The operator's CLI: library warnings to stderr as one line each, without the ones that quote values."""
    silence_quoting_warnings()
    root = logging.getLogger()
    if any(getattr(h, "_radloop_cli", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(QuotedValueFilter())
    handler._radloop_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level < logging.WARNING:
        root.setLevel(logging.WARNING)
