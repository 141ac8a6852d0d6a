"""The registry's champion/challenger decision: the approval policy's :func:`shared.approval.judge` applied to the
evidence the pipeline's Evaluate step measured on the locked evaluation set (``evaluation.json``'s ``promotion``).

The thresholds come from the one policy document (:mod:`shared.approval`); this module only applies them.
"""

from __future__ import annotations

from typing import Any, Literal

from shared.approval import ApprovalPolicy, judge

Decision = Literal["approved", "pending"]


def decide(policy: ApprovalPolicy, evaluation: dict[str, Any] | None, *, has_champion: bool) -> tuple[Decision, str]:
    """``approved`` iff every condition of the policy holds on the evaluation's locked-set evidence; otherwise
    ``pending`` with every unmet condition named. ``has_champion``: the registry's own view (a champion approved
    while this run trained means the evidence must carry a paired comparison with it)."""
    evidence = (evaluation or {}).get("promotion")
    if isinstance(evidence, dict):
        evidence = {**evidence, "champion_expected": bool(evidence.get("champion_expected")) or has_champion}
    verdict = judge(policy, evidence)
    return ("approved" if verdict.approved else "pending"), verdict.text(policy.name)
