"""The registry's champion/challenger decision: a pure function of the metrics and the approval policy.

The thresholds come from the one policy document (:mod:`shared.approval`); this module only applies them.
"""

from __future__ import annotations

from typing import Literal

from shared.approval import ApprovalPolicy

Decision = Literal["approved", "pending"]


def decide(policy: ApprovalPolicy, auc: float | None, sensitivity: float | None,
           champion_auc: float | None) -> tuple[Decision, str]:
    """``approved`` iff AUC >= champion + margin (no champion: no such condition), AUC >= floor and
    sensitivity >= floor; otherwise ``pending`` with every unmet condition named."""
    if auc is None or sensitivity is None:
        return "pending", "the evaluation has no AUC or sensitivity, so it cannot be approved automatically"
    failed = []
    if champion_auc is not None and auc < champion_auc + policy.auc_margin:
        failed.append(f"AUC {auc:.4f} < champion AUC {champion_auc:.4f} + margin {policy.auc_margin:.4f}")
    if auc < policy.auc_floor:
        failed.append(f"AUC {auc:.4f} < floor {policy.auc_floor:.4f}")
    if sensitivity < policy.sensitivity_floor:
        failed.append(f"sensitivity {sensitivity:.4f} < floor {policy.sensitivity_floor:.4f}")
    if failed:
        return "pending", f"policy {policy.name}: " + "; ".join(failed)
    vs = "no champion"
    if champion_auc is not None:
        vs = f"champion AUC {champion_auc:.4f} + margin {policy.auc_margin:.4f}"
    return "approved", (
        f"policy {policy.name}: AUC {auc:.4f} >= {vs}, >= floor {policy.auc_floor:.4f}; "
        f"sensitivity {sensitivity:.4f} >= floor {policy.sensitivity_floor:.4f}"
    )
