"""Pre-verified labels imported from a public dataset (``radloop import-dataset``): the pure state transition.

An imported label is a read whose reader is the dataset, never a person: ``reader = "dataset:<source>"`` (for example
``dataset:rsna-pneumonia``). It takes the same path as a radiologist's read: a ``read#`` row and a ``label#`` row
appended to the labels table in the case's transaction, the case made final, and exactly one ``ImageVerified``
through the case's outbox (:func:`services.verification.domain.cases._final_label`). What differs:

- the resolution is ``imported`` and both rows record ``source``;
- it is final in either reading mode (the dataset's label is the ground truth; no second reader is waited for);
- importing the same label again changes nothing (a resumed import is idempotent); a different label from the same
  source is a new label version (the dataset was corrected);
- a case that a radiologist has read (or holds a lease on) is left alone (409): an import never overrides a person.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from services.verification.domain.cases import (
    FINAL,
    LABELS,
    ReadOutcome,
    ReadRejected,
    _final_label,
    lease_holder,
    now_iso,
    priority_sk,
)

#: A dataset's source name: lower-case letters, digits, dots and hyphens (``rsna-pneumonia``, ``chestxray14``).
SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
RESOLUTION = "imported"


def dataset_reader(source: str) -> str:
    """The reader id of a dataset (the labeller recorded for its labels)."""
    return f"dataset:{source}"


def apply_imported(case: dict[str, Any], source: str, label: str, *, now: float, at: str | None = None) -> ReadOutcome:
    """Make ``label`` from dataset ``source`` the case's final label (see the module docstring).

    Returns an outcome with no appends and no events when the same label from the same source is already final.
    Raises :class:`ReadRejected` (422) for an unknown label or source, (409) when a person read, is reading, or
    decided the case.
    """
    if label not in LABELS:
        raise ReadRejected(422, f"label {label!r} is not one of {', '.join(LABELS)}")
    if not SOURCE_RE.match(source):
        raise ReadRejected(422, f"source {source!r} must be lower-case letters, digits, '.' or '-' (max 63)")
    reader = dataset_reader(source)
    c = copy.deepcopy(case)
    out = ReadOutcome(case=c)
    final = c.get("final") or {}
    people = [r for r in (c.get("readers") or []) if r != reader]
    if c.get("status") == FINAL and final.get("decided_by") == reader and final.get("label") == label:
        out.response = {"case_id": c["case_id"], "status": FINAL, "label_version": final.get("version"),
                        "final_label": label, "source": source, "result": "unchanged"}
        return out
    if people or (c.get("status") == FINAL and final.get("decided_by") != reader):
        raise ReadRejected(409, f"case {c['case_id']} was read by a radiologist; an imported label does not "
                                "override a person's read")
    if lease_holder(c, now) is not None:
        raise ReadRejected(409, f"case {c['case_id']} is claimed by a radiologist; an imported label does not "
                                "override a read in progress")
    at = at or now_iso()
    seq = int(c.get("read_seq", 0)) + 1
    c["read_seq"] = seq
    kind = "amendment" if c.get("status") == FINAL else "imported"
    out.appends.append({"label_sk": f"read#{seq:06d}", "kind": "read", "read_kind": kind, "reader": reader,
                        "label": label, "confidence": None, "comment": "", "at": at, "read_no": seq,
                        "source": source})
    reads = dict(c.get("reads") or {})
    reads[reader] = {"label": label, "confidence": None, "at": at, "read_no": seq}
    c["reads"] = reads
    c["readers"] = [*people, reader]
    _final_label(c, label, RESOLUTION, [reader], at, reader, out)
    c["final"]["source"] = source
    out.appends[-1]["source"] = source
    c["priority_sk"] = priority_sk(c)
    out.response = {"case_id": c["case_id"], "status": FINAL, "label_version": c["final"]["version"],
                    "final_label": label, "source": source, "result": "amended" if kind == "amendment" else "imported"}
    return out
