"""The registry's champion/challenger decision: the approval policy's :func:`shared.approval.judge` applied to the
evidence the pipeline's Evaluate step measured on the locked evaluation set (``evaluation.json``'s ``promotion``).

The thresholds come from the one policy document (:mod:`shared.approval`); this module only applies them.
"""

from __future__ import annotations

from typing import Any, Literal

from shared.approval import ApprovalPolicy, judge

Decision = Literal["approved", "pending"]


def decide(policy: ApprovalPolicy, evaluation: dict[str, Any] | None, *, has_champion: bool,
           champion_version: int | None = None, compared_with: int | None = None) -> tuple[Decision, str]:
    """``approved`` iff every condition of the policy holds on the evaluation's locked-set evidence; otherwise
    ``pending`` with every unmet condition named. ``has_champion``: the registry's own view (a champion approved
    while this run trained means the evidence must carry a paired comparison with it). ``champion_version`` is that
    champion and ``compared_with`` the champion the run was evaluated against (``TrainingCompleted``): evidence
    against an older champion says nothing about this one (a review had a challenger worse than the champion
    approved on its comparison with the champion before), so the model stays pending."""
    evidence = (evaluation or {}).get("promotion")
    if isinstance(evidence, dict):
        evidence = {**evidence, "champion_expected": bool(evidence.get("champion_expected")) or has_champion}
    verdict = judge(policy, evidence)
    reasons = verdict.text(policy.name)
    if has_champion and compared_with is not None and champion_version is not None and compared_with != \
            champion_version:
        return "pending", (f"policy {policy.name}: the evidence compares this model with v{compared_with}, but "
                           f"v{champion_version} became champion while it trained; it was not compared with the "
                           "champion (a new run compares with it)")
    return ("approved" if verdict.approved else "pending"), reasons
