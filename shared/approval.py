"""The approval policy: the one document that holds the floors and the margin a model must meet.

Three readers, one source (``shared/approval_policy.json``, or the file a deployment names in
``RADLOOP_APPROVAL_POLICY_FILE``):

- the training pipeline's definition (``training.pipeline``): the defaults of its ``AucFloor`` and ``AucMargin``
  parameters, which its CheckQuality condition compares the test AUC with;
- the orchestrator: the ``AucFloor`` and ``AucMargin`` it passes to every execution;
- the registry: its champion/challenger decision (AUC floor, AUC margin over the champion, sensitivity floor).

So changing a threshold means editing this one file; there are no per-number settings. Pure: no AWS, no I/O beyond
reading or writing the document.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: The policy shipped with radloop.
DEFAULT_POLICY_FILE = Path(__file__).with_name("approval_policy.json")
#: The environment variable that points every reader at another policy document (the services' settings field
#: ``approval_policy_file`` reads the same variable).
POLICY_FILE_ENV = "RADLOOP_APPROVAL_POLICY_FILE"
#: The thresholds, each a fraction in [0, 1].
THRESHOLDS = ("auc_floor", "auc_margin", "sensitivity_floor")


class ApprovalPolicyError(ValueError):
    """The policy document is missing, not JSON, or has a threshold that is absent or outside [0, 1]."""


@dataclass(frozen=True)
class ApprovalPolicy:
    """The floors and the margin, validated on construction (a bad document stops whoever loads it)."""

    name: str
    auc_floor: float
    auc_margin: float
    sensitivity_floor: float
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ApprovalPolicyError("an approval policy needs a name")
        for k in THRESHOLDS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ApprovalPolicyError(f"approval policy {k}={v!r} must be a number")
            if not 0.0 <= float(v) <= 1.0:
                raise ApprovalPolicyError(f"approval policy {k}={float(v)} must lie between 0 and 1")
            object.__setattr__(self, k, float(v))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "approval policy") -> ApprovalPolicy:
        """From the JSON document's fields (``name``, ``description`` and the three thresholds)."""
        missing = [k for k in THRESHOLDS if k not in raw]
        if missing:
            raise ApprovalPolicyError(f"{source} needs numeric auc_margin, auc_floor and sensitivity_floor: "
                                      f"{', '.join(missing)} missing")
        return cls(name=str(raw.get("name") or "approval-policy"), description=str(raw.get("description") or ""),
                   **{k: raw[k] for k in THRESHOLDS})

    @classmethod
    def load(cls, path: Path | str | None = None) -> ApprovalPolicy:
        """Read a policy document (None: :data:`DEFAULT_POLICY_FILE`)."""
        p = Path(path) if path else DEFAULT_POLICY_FILE
        try:
            raw = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ApprovalPolicyError(f"approval policy file {str(p)!r} is not readable JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ApprovalPolicyError(f"approval policy file {str(p)!r} must hold a JSON object")
        if not raw.get("name"):
            raw["name"] = p.stem
        return cls.from_dict(raw, source=f"approval policy {str(p)!r}")

    def as_dict(self) -> dict[str, Any]:
        """The thresholds and the name (what the registry records with each decision; no description)."""
        return {"name": self.name, "auc_margin": self.auc_margin, "auc_floor": self.auc_floor,
                "sensitivity_floor": self.sensitivity_floor}

    def write(self, path: Path | str) -> Path:
        """Write this policy as a document that :meth:`load` reads back (for a deployment's own policy)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return p


#: Per-number variables that earlier versions read (the orchestrator's and the registry's own defaults). They no
#: longer have any effect, so a deployment that still sets one is refused rather than silently given other numbers.
REMOVED_VARIABLES = ("RADLOOP_AUC_FLOOR", "RADLOOP_AUC_MARGIN", "RADLOOP_APPROVAL_AUC_FLOOR",
                     "RADLOOP_APPROVAL_AUC_MARGIN", "RADLOOP_APPROVAL_SENSITIVITY_FLOOR")


def refuse_removed_variables(env: dict[str, str] | None = None) -> None:
    """Raise :class:`ApprovalPolicyError` naming any of :data:`REMOVED_VARIABLES` that is set."""
    found = sorted(k for k in REMOVED_VARIABLES if k in (os.environ if env is None else env))
    if found:
        raise ApprovalPolicyError(
            f"{', '.join(found)} no longer set approval thresholds: write them in a policy document and name it in "
            f"{POLICY_FILE_ENV} (see shared/approval.py)")


def policy_file_from_env(env: dict[str, str] | None = None) -> Path:
    """The policy document this process should read: ``RADLOOP_APPROVAL_POLICY_FILE``, else the default."""
    value = (os.environ if env is None else env).get(POLICY_FILE_ENV, "")
    return Path(value) if value else DEFAULT_POLICY_FILE


def load_policy(path: Path | str | None = None) -> ApprovalPolicy:
    """The policy at ``path``; without one, the document named by the environment (or the default)."""
    return ApprovalPolicy.load(path or policy_file_from_env())
