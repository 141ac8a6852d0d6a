"""cdk-nag as radloop runs it: the HIPAA Security pack plus the AwsSolutions SQS rules (SQS2, SQS3, SQS4).

The HIPAA pack has no SQS or EventBridge rules, so the SQS rules of the AwsSolutions pack are added. Python cannot
build a pack from single rules (the rule functions are not exported through jsii), so the whole AwsSolutions pack
runs and only its SQS findings are kept. Acknowledged findings (``suppressions.py``) are not reported.
"""

from __future__ import annotations

from constructs import IConstruct

SQS_RULE_PREFIX = "AwsSolutions-SQS"


def nag_findings(scope: IConstruct) -> list[tuple[str, list[str]]]:
    """Unacknowledged findings as (rule, construct paths), after the app has been synthesized."""
    from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

    out: list[tuple[str, list[str]]] = []
    for v in HIPAASecurityChecks().validate_scope(scope).violations:
        out.append((v.rule_name, sorted({r.construct_path for r in v.violating_resources})))
    for v in AwsSolutionsChecks().validate_scope(scope).violations:
        if v.rule_name.startswith(SQS_RULE_PREFIX):
            out.append((v.rule_name, sorted({r.construct_path for r in v.violating_resources})))
    return out
