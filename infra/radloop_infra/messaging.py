"""The EventBridge bus and rules, the SQS queues and DLQs, exactly as the topology declares them.

Rules are rendered with ``CfnRule`` and the topology's pattern dict verbatim, so the deployed pattern is byte for byte
the one the local bootstrap creates. Each queue's policy lets ``events.amazonaws.com`` send only when the source
ARN is one of the rules that target it.

Rules that exist only in some deployments (the HealthImaging import-job rule, ``image_store=healthimaging``) come in as
``extra_rules``: the same :class:`~shared.topology.RuleSpec`, rendered the same way, covered by the same policies.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.radloop_infra.config import RULE_DLQ_RETENTION_DAYS, DeployParams
from infra.radloop_infra.security import Keys
from shared.topology import RuleSpec, Topology

#: EventBridge retries delivery to a target for up to a day before the event goes to the rule DLQ.
RULE_RETRY_ATTEMPTS = 185
RULE_MAX_EVENT_AGE_S = 24 * 3600


def _cid(name: str) -> str:
    return "".join(p.capitalize() for p in name.replace("_", "-").split("-"))


class Messaging(Construct):
    def __init__(self, scope: Construct, cid: str, *, params: DeployParams, topology: Topology, keys: Keys,
                 extra_rules: tuple[RuleSpec, ...] = ()) -> None:
        super().__init__(scope, cid)
        stack = Stack.of(self)
        removal = RemovalPolicy.RETAIN if params.env.retain_data else RemovalPolicy.DESTROY
        self.bus = events.EventBus(self, "Bus", event_bus_name=topology.bus_name)

        def queue(id_: str, **kw: object) -> sqs.Queue:
            return sqs.Queue(
                self, id_,
                encryption=sqs.QueueEncryption.KMS,
                encryption_master_key=keys.messaging,
                data_key_reuse=Duration.minutes(5),
                enforce_ssl=True,
                removal_policy=removal,
                **kw,  # type: ignore[arg-type]
            )

        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        for service, q in topology.queues.items():
            dlq = queue(f"{_cid(service)}Dlq", queue_name=q.dlq_name,
                        retention_period=Duration.seconds(q.dlq_retention_s))
            self.dlqs[service] = dlq
            self.queues[service] = queue(
                f"{_cid(service)}Queue",
                queue_name=q.name,
                visibility_timeout=Duration.seconds(q.visibility_timeout_s),
                retention_period=Duration.seconds(q.retention_s),
                dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=q.max_receive_count, queue=dlq),
            )

        # Events EventBridge could not deliver (after retries) land here, with their error, for replay.
        self.rule_dlq = queue("RuleDlq", queue_name=f"{topology.prefix}-events-dlq",
                              retention_period=Duration.days(RULE_DLQ_RETENTION_DAYS))
        # SQS2-4 on the rule DLQ itself: it is a DLQ, so it has no DLQ of its own.

        self.rules: dict[str, events.CfnRule] = {}
        sources_by_queue: dict[str, list[str]] = {}
        for spec in (*topology.rules, *extra_rules):
            rule = self._rule(spec)
            self.rules[spec.name] = rule
            sources_by_queue.setdefault(spec.target_queue, []).append(rule.attr_arn)

        for service, arns in sources_by_queue.items():
            self.queues[service].add_to_resource_policy(iam.PolicyStatement(
                sid="AllowOnlyTheTopologyRules",
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["sqs:SendMessage"],
                resources=[self.queues[service].queue_arn],
                conditions={"ArnEquals": {"aws:SourceArn": arns}},
            ))
        self.rule_dlq.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowTopologyRulesDeadLetters",
            principals=[iam.ServicePrincipal("events.amazonaws.com")],
            actions=["sqs:SendMessage"],
            resources=[self.rule_dlq.queue_arn],
            conditions={"ArnEquals": {"aws:SourceArn": [r.attr_arn for r in self.rules.values()]}},
        ))
        self.default_bus_arn = stack.format_arn(service="events", resource="event-bus", resource_name="default")

    def _rule(self, spec: RuleSpec) -> events.CfnRule:
        on_default = spec.bus == "default"
        return events.CfnRule(
            self, f"Rule{_cid(spec.name)}",
            name=spec.name,
            description=f"topology rule {spec.name} -> {spec.target_queue}",
            event_bus_name="default" if on_default else self.bus.event_bus_name,
            event_pattern=spec.event_pattern,
            state="ENABLED",
            targets=[events.CfnRule.TargetProperty(
                id=f"{spec.target_queue}-queue",
                arn=self.queues[spec.target_queue].queue_arn,
                dead_letter_config=events.CfnRule.DeadLetterConfigProperty(arn=self.rule_dlq.queue_arn),
                retry_policy=events.CfnRule.RetryPolicyProperty(
                    maximum_retry_attempts=RULE_RETRY_ATTEMPTS, maximum_event_age_in_seconds=RULE_MAX_EVENT_AGE_S),
            )],
        )
