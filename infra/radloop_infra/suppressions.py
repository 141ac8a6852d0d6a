"""Every accepted finding, one by one, with its justification (each one is also explained in docs/security.md, and
tests/infra checks that the two lists agree).

cdk-nag findings are acknowledged with ``Validations.of(construct).acknowledge``; checkov findings are skipped with
``Metadata.checkov.skip`` on the CloudFormation resource. Nothing else in infra/ suppresses a check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import jsii
from aws_cdk import Acknowledgment, Aspects, CfnResource, IAspect, Stack, Validations
from constructs import IConstruct


@dataclass(frozen=True)
class Suppression:
    tool: str  # "cdk-nag" or "checkov"
    rule: str
    applies_to: str  # which resources, in words (docs/security.md repeats it)
    reason: str
    #: Picks the CloudFormation resources it applies to: (logical path, resource type, environment) -> bool.
    match: Callable[[str, str, str], bool]


def _path_endswith(*suffixes: str) -> Callable[[str, str, str], bool]:
    return lambda path, _t, _e: any(path.endswith(s) for s in suffixes)


def _type(*types: str) -> Callable[[str, str, str], bool]:
    return lambda _p, t, _e: t in types


#: The inline policies CDK writes for roles it creates itself (construct paths): the task execution roles (image
#: pull, logs, secrets), the VPC flow-log role, the CloudTrail-to-Logs role and the policy a bucket's EventBridge
#: notifications attach to CDK's notifications handler role. A task role or the SageMaker pipeline role never matches: their
#: permissions are managed policies rendered from needs.py, and an inline policy on them must fail cdk-nag.
CDK_INLINE_POLICY_PATHS = re.compile(
    r"/(?:Compute/\w+Task/ExecutionRole/DefaultPolicy"
    r"|Network/Vpc/FlowLog/IAMRole/DefaultPolicy"
    r"|Observability/Trail/LogsRole/DefaultPolicy"
    r"|Data/Bucket\w+/Notifications/HandlerPolicy)"
    r"/Resource$"
)


def _cdk_inline_policy(path: str, rtype: str, _env: str) -> bool:
    return rtype == "AWS::IAM::Policy" and CDK_INLINE_POLICY_PATHS.search(path) is not None


SUPPRESSIONS: tuple[Suppression, ...] = (
    Suppression(
        "cdk-nag", "HIPAA.Security-IAMNoInlinePolicy",
        "the default policies CDK generates for its own roles only (task execution roles, the VPC flow-log role, the "
        "CloudTrail-to-Logs role and the S3 notifications handler role), matched by construct path",
        "Each is bound one-to-one to a CDK-managed role and scoped to that role's resources by CDK grants. The "
        "policies that carry application permissions (task roles, the SageMaker role) are managed policies rendered "
        "from infra/radloop_infra/needs.py; an inline policy on any other role is reported.",
        _cdk_inline_policy,
    ),
    Suppression(
        "cdk-nag", "HIPAA.Security-S3BucketReplicationEnabled",
        "every bucket",
        "Cross-region replication is a data-residency decision each hospital makes (PHI may have to stay in one "
        "region). Durability comes from versioning, S3's 11 nines and daily DynamoDB backups; docs/deploy.md shows "
        "how to add a replication rule.",
        _type("AWS::S3::Bucket"),
    ),
    Suppression(
        "cdk-nag", "HIPAA.Security-S3DefaultEncryptionKMS",
        "the access-log bucket",
        "S3 server access logging and ELB access logging deliver only to buckets encrypted with SSE-S3 (AWS "
        "documentation). The logs hold request lines, and a URL's query string can carry PHI (QIDO matching keys "
        "such as PatientName), so the bucket is protected as PHI: encrypted at rest (SSE-S3, AES-256), SSL-only, "
        "versioned, all public access blocked, written only by the log delivery services, and expired after the "
        "environment's log retention. No radloop API accepts credentials in a URL (tokens travel in the "
        "Authorization header only), so the logs hold no replayable token.",
        _path_endswith("/Data/AccessLogs/Resource"),
    ),
    Suppression(
        "checkov", "CKV_AWS_18",
        "the access-log bucket",
        "It is the access-log destination of every other bucket; logging it into itself would log its own log "
        "writes without end. Its objects (request URLs, whose query strings can carry PHI) are protected as PHI: "
        "encrypted, SSL-only, private and expired after the log retention; CloudTrail records its management "
        "access.",
        _path_endswith("/Data/AccessLogs/Resource"),
    ),
    Suppression(
        "cdk-nag", "HIPAA.Security-SecretsManagerRotationEnabled",
        "the pseudonymisation and de-identification key secrets",
        "Rotating either HMAC key would change every patient pseudonym or remapped UID and break linkage of studies "
        "already in the index. Re-keying is a planned, manual migration (docs/security.md), not a scheduled rotation.",
        _path_endswith("/Compute/PseudonymKey/Resource", "/Compute/DeidKey/Resource"),
    ),
    Suppression(
        "cdk-nag", "HIPAA.Security-ELBDeletionProtectionEnabled",
        "the ALB and NLB in the dev environment only",
        "Dev stacks are created and destroyed often; prod has deletion protection on.",
        lambda path, t, env: env == "dev" and t == "AWS::ElasticLoadBalancingV2::LoadBalancer",
    ),
    Suppression(
        "cdk-nag", "AwsSolutions-SQS3",
        "the EventBridge rule dead-letter queue",
        "It is itself a dead-letter queue (the DeadLetterConfig of every rule target). The rule only recognises "
        "queues used in an SQS RedrivePolicy as DLQs.",
        _path_endswith("/Messaging/RuleDlq/Resource"),
    ),
    *(
        Suppression(
            "checkov", rule,
            "the Lambda handlers CDK adds for its custom resources (restrict the default security group, S3 "
            "EventBridge notifications)",
            f"{what} These handlers run only during CloudFormation deployments, touch no PHI, and are not radloop "
            "code; radloop itself runs no Lambda functions.",
            _type("AWS::Lambda::Function"),
        )
        for rule, what in (
            ("CKV_AWS_115", "A concurrency limit is moot for a handler invoked once per deployment."),
            ("CKV_AWS_116", "CloudFormation invokes them synchronously and reports failures itself; a DLQ adds "
                            "nothing."),
            ("CKV_AWS_117", "They call only AWS control-plane APIs; placing them in the endpoint-only VPC would "
                            "require more endpoints for no data protection gain."),
        )
    ),
)


@jsii.implements(IAspect)
class _Apply:
    def __init__(self, env: str) -> None:
        self.env = env

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, CfnResource):
            return
        path = node.node.path
        rtype = node.cfn_resource_type
        checkov = []
        for s in SUPPRESSIONS:
            if not s.match(path, rtype, self.env):
                continue
            if s.tool == "cdk-nag":
                Validations.of(node).acknowledge(Acknowledgment(id=s.rule, reason=s.reason))
            else:
                checkov.append({"id": s.rule, "comment": s.reason[:250]})
        if checkov:
            node.add_metadata("checkov", {"skip": checkov})


def apply_suppressions(stack: Stack, env: str) -> None:
    """Acknowledge the listed cdk-nag findings and add checkov skips on the matching resources."""
    # An aspect (not a walk now) so that resources CDK adds while synthesizing, such as custom resource
    # handlers, are reached too.
    Aspects.of(stack).add(_Apply(env))
