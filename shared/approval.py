"""The approval policy: the one document that holds the floors and the margin a model must meet.

Three readers, one source (``shared/approval_policy.json``, or the file a deployment names in
``RADLOOP_APPROVAL_POLICY_FILE``):

- the training pipeline's definition (``training.pipeline``): the defaults of its ``AucFloor`` and ``AucMargin``
  parameters, which its CheckQuality condition compares the test AUC with;
- the orchestrator: the ``AucFloor`` and ``AucMargin`` it passes to every execution;
- the registry: its champion/challenger decision, :func:`judge`, applied to the evidence the Evaluate step measured on
  the locked evaluation set (paired DeLong interval of the AUC difference, operating point, calibration). Evaluate
  runs the same :func:`judge` and writes its verdict into ``evaluation.json``, so the record says why before the
  registry reads it.

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
#: The thresholds every document must give, each a fraction in [0, 1].
THRESHOLDS = ("auc_floor", "auc_margin", "sensitivity_floor")
#: Fractions a document may give (absent: 0, no floor).
OPTIONAL_FRACTIONS = ("specificity_floor",)
#: Calibration ceilings a document may give (absent or null: reported, not gated).
OPTIONAL_CEILINGS = ("brier_max", "ece_max")
#: Case counts a document may give (absent: 0).
COUNTS = ("min_positives", "min_negatives")
#: How a challenger is compared with the champion: it must be better by the margin, or (a declared refresh, e.g. a
#: retrain on more data of the same kind) no worse than the champion by more than the margin.
COMPARISONS = ("superiority", "non-inferiority")


class ApprovalPolicyError(ValueError):
    """The policy document is missing, not JSON, or has a threshold that is absent or outside [0, 1]."""


@dataclass(frozen=True)
class ApprovalPolicy:
    """The floors and the margin, validated on construction (a bad document stops whoever loads it)."""

    name: str
    auc_floor: float
    auc_margin: float
    sensitivity_floor: float
    #: specificity at the operating point (the issue's "useless operating point": 0.03 flags every image)
    specificity_floor: float = 0.0
    #: the least positives and negatives the locked evaluation set must hold, and the least validation positives an
    #: operating threshold may be chosen from
    min_positives: int = 0
    min_negatives: int = 0
    #: calibration gates (None: Brier score and ECE are reported but do not gate)
    brier_max: float | None = None
    ece_max: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ApprovalPolicyError("an approval policy needs a name")
        for k in (*THRESHOLDS, *OPTIONAL_FRACTIONS, *OPTIONAL_CEILINGS):
            v = getattr(self, k)
            if v is None and k in OPTIONAL_CEILINGS:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ApprovalPolicyError(f"approval policy {k}={v!r} must be a number")
            if not 0.0 <= float(v) <= 1.0:
                raise ApprovalPolicyError(f"approval policy {k}={float(v)} must lie between 0 and 1")
            object.__setattr__(self, k, float(v))
        for k in COUNTS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < 0:
                raise ApprovalPolicyError(f"approval policy {k}={v!r} must be a whole number >= 0")
            object.__setattr__(self, k, int(v))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "approval policy") -> ApprovalPolicy:
        """From the JSON document's fields (``name``, ``description`` and the three thresholds)."""
        missing = [k for k in THRESHOLDS if k not in raw]
        if missing:
            raise ApprovalPolicyError(f"{source} needs numeric auc_margin, auc_floor and sensitivity_floor: "
                                      f"{', '.join(missing)} missing")
        optional = {k: raw[k] for k in (*OPTIONAL_FRACTIONS, *OPTIONAL_CEILINGS, *COUNTS) if k in raw}
        return cls(name=str(raw.get("name") or "approval-policy"), description=str(raw.get("description") or ""),
                   **{k: raw[k] for k in THRESHOLDS}, **optional)

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
                "sensitivity_floor": self.sensitivity_floor, "specificity_floor": self.specificity_floor,
                "min_positives": self.min_positives, "min_negatives": self.min_negatives,
                "brier_max": self.brier_max, "ece_max": self.ece_max}

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


# -- the promotion decision -------------------------------------------------------------------------------------------
#
# The evidence is the ``promotion`` block that the pipeline's Evaluate step writes into ``evaluation.json``
# (training/evaluate.py), all of it measured on the locked evaluation set except the threshold, which is chosen on
# validation:
#
#   locked_set        {"version", "sha256", "n", "positives", "negatives"}
#   challenger        {"auc", "low", "high", "se"}                       DeLong 95% interval
#   champion          {"version", "auc", "low", "high", "se"} or None    re-scored on the same locked set
#   paired            {"diff", "low", "high", "se", "p_value"} or None   AUC(challenger) - AUC(champion), DeLong
#   comparison        "superiority" | "non-inferiority"
#   operating_point   {"threshold", "threshold_ci", "validation_positives", "validation_negatives",
#                      "sensitivity", "sensitivity_ci", "specificity", "specificity_ci"}
#   calibration       {"brier", "ece"}
#   champion_expected true when a champion exists (so a missing paired comparison is a reason, not a first model)


@dataclass(frozen=True)
class Verdict:
    """``approved`` or ``pending``, with every unmet condition (or, when approved, every met one) in words."""

    decision: str
    reasons: tuple[str, ...]

    @property
    def approved(self) -> bool:
        return self.decision == "approved"

    def text(self, policy_name: str) -> str:
        return f"policy {policy_name}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reasons": list(self.reasons)}


def _num(block: Any, key: str) -> float | None:
    if not isinstance(block, dict):
        return None
    v = block.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _ci(block: Any, key: str) -> str:
    v = block.get(key) if isinstance(block, dict) else None
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
        return f" (95% CI {v[0]:.3f}-{v[1]:.3f})"
    return ""


def judge(policy: ApprovalPolicy, evidence: dict[str, Any] | None) -> Verdict:
    """The promotion decision: ``approved`` only if every condition of the policy holds on the locked set.

    - the locked set holds at least ``min_positives`` positives and ``min_negatives`` negatives;
    - the threshold was chosen on at least ``min_positives`` validation positives;
    - with a champion: the lower bound of the paired 95% interval of AUC(challenger) - AUC(champion) is above
      ``auc_margin`` (superiority) or above ``-auc_margin`` (a declared non-inferiority refresh);
    - without one (the first model): the lower bound of the challenger's AUC interval reaches ``auc_floor``; with a
      champion, its AUC reaches ``auc_floor`` too;
    - sensitivity and specificity at the operating point reach their floors;
    - Brier score and ECE are below their ceilings where the policy sets them.
    """
    if not isinstance(evidence, dict) or not evidence:
        return Verdict("pending", ("the evaluation carries no locked-set evidence (evaluation.json has no "
                                   "'promotion' block), so it cannot be approved automatically",))
    failed: list[str] = []
    met: list[str] = []
    locked = evidence.get("locked_set") or {}
    pos, neg = int(_num(locked, "positives") or 0), int(_num(locked, "negatives") or 0)
    version = locked.get("version")
    if not locked:
        failed.append("no locked evaluation set was scored")
    elif pos < policy.min_positives or neg < policy.min_negatives:
        failed.append(f"the locked set v{version} holds {pos} positives and {neg} negatives; the policy needs at "
                      f"least {policy.min_positives} and {policy.min_negatives}")
    else:
        met.append(f"locked set v{version}: {pos} positives, {neg} negatives")

    op = evidence.get("operating_point") or {}
    vpos = _num(op, "validation_positives")
    if vpos is None or vpos < policy.min_positives:
        failed.append(f"the operating threshold was chosen from {0 if vpos is None else int(vpos)} validation "
                      f"positives, fewer than the policy's minimum of {policy.min_positives}")

    ch = evidence.get("challenger") or {}
    auc, auc_low = _num(ch, "auc"), _num(ch, "low")
    champion_expected = bool(evidence.get("champion_expected"))
    paired = evidence.get("paired")
    if auc is None or auc_low is None:
        failed.append("the challenger has no AUC on the locked set")
    elif champion_expected:
        if auc < policy.auc_floor:
            failed.append(f"AUC {auc:.4f} < floor {policy.auc_floor:.4f}")
        d_low, diff, d_high = _num(paired, "low"), _num(paired, "diff"), _num(paired, "high")
        # Only a declared non-inferiority refresh lowers the bar: anything else, a misspelling included, is held to
        # superiority (any value but exactly "superiority" counted as non-inferiority: a review).
        mode = COMPARISONS[1] if evidence.get("comparison") == COMPARISONS[1] else COMPARISONS[0]
        bar = policy.auc_margin if mode == "superiority" else -policy.auc_margin
        if d_low is None or diff is None or d_high is None:
            failed.append("the champion could not be re-scored on the locked set, so there is no paired comparison")
        else:
            champ = _num(evidence.get("champion"), "auc")
            what = (f"AUC {auc:.4f} vs champion {champ:.4f}: paired difference {diff:+.4f} "
                    f"(95% CI {d_low:+.4f} to {d_high:+.4f})")
            if d_low > bar:
                met.append(f"{what}, lower bound above {bar:+.4f} ({mode})")
            else:
                failed.append(f"{what}: its lower bound is not above {bar:+.4f} ({mode}), so the challenger is not "
                              "shown to be " + ("better than the champion by the margin" if mode == "superiority"
                                                else "no worse than the champion by more than the margin"))
    elif auc_low < policy.auc_floor:
        failed.append(f"first model: AUC {auc:.4f} (95% CI {auc_low:.4f}-{_num(ch, 'high') or auc:.4f}); its lower "
                      f"bound is below the floor {policy.auc_floor:.4f}")
    else:
        met.append(f"first model: AUC {auc:.4f}, 95% CI lower bound {auc_low:.4f} >= floor {policy.auc_floor:.4f}")

    for name, floor in (("sensitivity", policy.sensitivity_floor), ("specificity", policy.specificity_floor)):
        v = _num(op, name)
        if v is None:
            failed.append(f"no {name} at the operating point")
        elif v < floor:
            failed.append(f"{name} {v:.4f}{_ci(op, name + '_ci')} at threshold {_num(op, 'threshold') or 0:.4f} "
                          f"< floor {floor:.4f}")
        else:
            met.append(f"{name} {v:.4f}{_ci(op, name + '_ci')} >= {floor:.4f}")

    cal = evidence.get("calibration") or {}
    for name, ceiling in (("brier", policy.brier_max), ("ece", policy.ece_max)):
        v = _num(cal, name)
        if ceiling is None:
            continue
        if v is None:
            failed.append(f"no {name} reported, and the policy gates it")
        elif v > ceiling:
            failed.append(f"{name} {v:.4f} > ceiling {ceiling:.4f}")
    if failed:
        return Verdict("pending", tuple(failed))
    return Verdict("approved", tuple(met))
