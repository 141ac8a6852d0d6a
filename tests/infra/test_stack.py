"""Assertions on the synthesized templates: they render the topology, and they are encrypted and least-privilege."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from infra.radloop_infra import needs as N
from infra.radloop_infra.compute import PUBLIC_ORIGIN_SERVICES, http_services
from infra.radloop_infra.config import PROD_LOG_RETENTION_DAYS, env_config, imports_expire_days
from shared.settings import DEFAULT_PORTS
from shared.topology import ROUTES, SERVICES, build_topology
from tests.infra.conftest import ENVS, REPO

pytestmark = pytest.mark.parametrize("env", ENVS)


def _topology(synth, env):  # type: ignore[no-untyped-def]
    return build_topology(synth[env].stack.params.prefix)


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def _ref(x: Any) -> str | None:
    """The logical id behind a Ref or a GetAtt (or None)."""
    if isinstance(x, dict):
        if "Ref" in x:
            return x["Ref"]
        if "Fn::GetAtt" in x:
            return x["Fn::GetAtt"][0]
    return None


def _logical_by_name(res: dict[str, Any], rtype: str, prop: str) -> dict[str, str]:
    return {v["Properties"][prop]: k for k, v in res.items() if v["Type"] == rtype and prop in v["Properties"]}


# -- messaging -------------------------------------------------------------------------------------------------------
def test_every_queue_is_kms_encrypted_and_every_topology_queue_has_its_redrive(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    queues = s.of_type("AWS::SQS::Queue")
    by_name = _logical_by_name(s.resources, "AWS::SQS::Queue", "QueueName")
    assert len(queues) == 2 * len(topo.queues) + 1  # each queue, its DLQ, and the rule DLQ
    for lid, q in queues.items():
        assert q["Properties"].get("KmsMasterKeyId"), f"queue {lid} is not KMS-encrypted"
    for _service, spec in topo.queues.items():
        props = s.resources[by_name[spec.name]]["Properties"]
        redrive = props["RedrivePolicy"]
        assert _ref(redrive["deadLetterTargetArn"]) == by_name[spec.dlq_name]
        assert redrive["maxReceiveCount"] == spec.max_receive_count
        assert props["VisibilityTimeout"] == spec.visibility_timeout_s
        assert props["MessageRetentionPeriod"] == spec.retention_s
        assert "RedrivePolicy" not in s.resources[by_name[spec.dlq_name]]["Properties"]


def test_rules_equal_the_topology_patterns_and_targets(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    queue_names = {k: v["Properties"]["QueueName"] for k, v in s.of_type("AWS::SQS::Queue").items()}
    bus_names = {k: v["Properties"]["Name"] for k, v in s.of_type("AWS::Events::EventBus").items()}
    rendered = {}
    for r in s.of_type("AWS::Events::Rule").values():
        p = r["Properties"]
        targets = [queue_names.get(_ref(t["Arn"])) for t in p.get("Targets", [])]
        if not any(targets):
            continue  # alert rules (to the SNS topic) are not topology routing
        bus = p.get("EventBusName", "default")
        bus = bus_names.get(_ref(bus), bus) if isinstance(bus, dict) else bus
        rendered[p["Name"]] = (bus, p["EventPattern"], targets)
        for t in p["Targets"]:
            assert t["DeadLetterConfig"]["Arn"], "every rule target has a DLQ"
            assert t["RetryPolicy"]["MaximumRetryAttempts"] > 0
    expected = {r.name: (r.bus, r.event_pattern, [topo.queues[r.target_queue].name]) for r in topo.rules}
    assert rendered == expected


def test_queue_policies_allow_send_only_from_their_rules(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    qname = {k: v["Properties"]["QueueName"] for k, v in s.of_type("AWS::SQS::Queue").items()}
    rule_of_queue: dict[str, set[str]] = {}
    for lid, r in s.of_type("AWS::Events::Rule").items():
        for t in r["Properties"].get("Targets", []):
            if _ref(t["Arn"]) in qname:
                rule_of_queue.setdefault(qname[_ref(t["Arn"])], set()).add(lid)
    checked = 0
    for pol in s.of_type("AWS::SQS::QueuePolicy").values():
        for qref in pol["Properties"]["Queues"]:
            name = qname[_ref(qref)]
            allows = [st for st in pol["Properties"]["PolicyDocument"]["Statement"] if st["Effect"] == "Allow"]
            denies = [st for st in pol["Properties"]["PolicyDocument"]["Statement"] if st["Effect"] == "Deny"]
            assert any(d["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for d in denies), name
            if name not in {q.name for q in topo.queues.values()}:
                continue
            assert len(allows) == 1, f"{name}: {allows}"
            st = allows[0]
            assert st["Action"] == "sqs:SendMessage" and st["Principal"] == {"Service": "events.amazonaws.com"}
            sources = {_ref(a) for a in _as_list(st["Condition"]["ArnEquals"]["aws:SourceArn"])}
            assert sources == rule_of_queue[name]
            checked += 1
    assert checked == len(topo.queues)


# -- data ------------------------------------------------------------------------------------------------------------
def test_every_table_has_a_cmk_pitr_and_the_topology_schema(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    tables = {v["Properties"]["TableName"]: v["Properties"] for v in s.of_type("AWS::DynamoDB::Table").values()}
    assert set(tables) == {t.name for t in topo.tables.values()}
    for spec in topo.tables.values():
        p = tables[spec.name]
        assert p["SSESpecification"]["SSEEnabled"] is True and p["SSESpecification"]["SSEType"] == "KMS"
        assert _ref(p["SSESpecification"]["KMSMasterKeyId"]), "a customer-managed key, not the AWS-owned one"
        assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        keys = {k["KeyType"]: k["AttributeName"] for k in p["KeySchema"]}
        assert keys["HASH"] == spec.partition_key.name
        assert keys.get("RANGE") == (spec.sort_key.name if spec.sort_key else None)
        gsis = {g["IndexName"]: {k["KeyType"]: k["AttributeName"] for k in g["KeySchema"]}
                for g in p.get("GlobalSecondaryIndexes", [])}
        assert gsis == {i.name: {"HASH": i.partition_key.name, **({"RANGE": i.sort_key.name} if i.sort_key else {})}
                        for i in spec.indexes}
        if spec.ttl_attribute:
            assert p["TimeToLiveSpecification"] == {"AttributeName": spec.ttl_attribute, "Enabled": True}
        assert p["BillingMode"] == "PAY_PER_REQUEST"
        assert p.get("DeletionProtectionEnabled", False) is (env == "prod")


def test_every_bucket_is_ssl_only_encrypted_and_private(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    buckets = s.of_type("AWS::S3::Bucket")
    policies = {_ref(p["Properties"]["Bucket"]): p["Properties"]["PolicyDocument"]["Statement"]
                for p in s.of_type("AWS::S3::BucketPolicy").values()}
    sse_s3 = [lid for lid in buckets if "AccessLogs" in lid]
    assert len(sse_s3) == 1, "only the access-log bucket may use SSE-S3 (justified in docs/security.md)"
    for lid, b in buckets.items():
        p = b["Properties"]
        assert p["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
        assert p["VersioningConfiguration"]["Status"] == "Enabled"
        enc = p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        if lid in sse_s3:
            assert enc["SSEAlgorithm"] == "AES256"
        else:
            assert enc["SSEAlgorithm"] == "aws:kms" and _ref(enc["KMSMasterKeyID"]), lid
            assert "LoggingConfiguration" in p, f"{lid} has no access logging"
        assert any(st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for st in policies[lid]), f"{lid} is not SSL-only"
    names = {v["Properties"].get("BucketName") for v in buckets.values()}
    assert {b.name for b in topo.buckets.values()} <= names


def test_lifecycle_expires_imports_and_tiers_frames(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    by_name = {v["Properties"].get("BucketName"): v["Properties"] for v in s.of_type("AWS::S3::Bucket").values()}
    ingest_rules = by_name[topo.bucket("ingestion")]["LifecycleConfiguration"]["Rules"]
    # the expiry is derived from the DLQ retention (test_hardening checks that it outlives the DLQ)
    assert any(r.get("Prefix") == "imports/" and r["ExpirationInDays"] == imports_expire_days(topo)
               for r in ingest_rules)
    image_rules = by_name[topo.bucket("images")]["LifecycleConfiguration"]["Rules"]
    tiering = [r for r in image_rules if r.get("Prefix") == "frames/"]
    assert tiering and tiering[0]["Transitions"][0]["StorageClass"] == "INTELLIGENT_TIERING"
    bucket_lid = {v["Properties"].get("BucketName"): k for k, v in s.of_type("AWS::S3::Bucket").items()}
    notif = [v["Properties"] for v in s.of_type("Custom::S3BucketNotifications").values()]
    assert [_ref(n["BucketName"]) for n in notif if "EventBridgeConfiguration" in n["NotificationConfiguration"]] == [
        bucket_lid[topo.bucket("ingestion")]]


def test_trail_logs_s3_data_events_on_the_phi_buckets(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    bucket_lid = {v["Properties"].get("BucketName"): k for k, v in s.of_type("AWS::S3::Bucket").items()}
    (trail,) = s.of_type("AWS::CloudTrail::Trail").values()
    p = trail["Properties"]
    assert p["EnableLogFileValidation"] is True and p["IsMultiRegionTrail"] is True and _ref(p["KMSKeyId"])
    assert p["CloudWatchLogsLogGroupArn"]
    logged = set()
    # advanced event selectors (DynamoDB data events need them; test_hardening checks the tables)
    for sel in p["AdvancedEventSelectors"]:
        fields = {f["Field"]: f for f in sel["FieldSelectors"]}
        if fields.get("resources.type", {}).get("Equals") == ["AWS::S3::Object"]:
            assert "readOnly" not in fields  # reads and writes
            for v in fields["resources.ARN"]["StartsWith"]:
                logged.add(v["Fn::Join"][1][0]["Fn::GetAtt"][0])
    phi = {bucket_lid[spec.name] for spec in topo.buckets.values() if spec.holds_phi}
    assert phi and phi <= logged


# -- IAM -------------------------------------------------------------------------------------------------------------
#: Actions that AWS defines without resource-level permissions; they touch no data, so they may use Resource "*".
RESOURCELESS_ACTIONS = {*N.TELEMETRY_ACTIONS, "ecr:GetAuthorizationToken", "cloudwatch:PutMetricData",
                        # CDK's own custom resource handler (restricting the default security group) and ENI
                        # management by the VPC flow-log and ECS roles.
                        "ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress",
                        "ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress",
                        "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams",
                        # SageMaker jobs in the VPC: describe calls (no resource-level permissions) and ENI changes,
                        # the latter conditioned on this VPC (checked below).
                        "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                        "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:CreateNetworkInterface",
                        "ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface",
                        "ec2:DeleteNetworkInterfacePermission"}


def _identity_statements(res: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for lid, r in res.items():
        docs = []
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs.append(r["Properties"]["PolicyDocument"])
        elif r["Type"] == "AWS::IAM::Role":
            docs.extend(p["PolicyDocument"] for p in r["Properties"].get("Policies", []))
        for d in docs:
            out.extend((lid, st) for st in d["Statement"])
    return out


def test_no_statement_grants_wildcard_actions_or_wildcard_resources_on_data(synth, env) -> None:
    s = synth[env]
    stmts = _identity_statements(s.resources)
    for kind in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy"):
        for lid, r in s.of_type(kind).items():
            stmts.extend((lid, st) for st in r["Properties"]["PolicyDocument"]["Statement"])
    assert len(stmts) > 50
    for lid, st in stmts:
        actions = _as_list(st.get("Action", []))
        if st["Effect"] == "Allow":
            assert not any(a == "*" or a.endswith(":*") for a in actions), f"{lid}: wildcard action {actions}"
            assert st.get("Principal") not in ("*", {"AWS": "*"}), f"{lid}: allows anyone"
            if "*" in _as_list(st.get("Resource", [])):
                extra = set(actions) - RESOURCELESS_ACTIONS
                assert not extra, f"{lid}: {sorted(extra)} on Resource '*'"
                if any(a.startswith("ec2:") and not a.startswith("ec2:Describe") for a in actions):
                    assert "ec2:Vpc" in json.dumps(st.get("Condition", {})), f"{lid}: ENI changes outside the VPC"
    for lid, key in s.of_type("AWS::KMS::Key").items():
        assert key["Properties"]["EnableKeyRotation"] is True, lid
        for st in key["Properties"]["KeyPolicy"]["Statement"]:
            assert st.get("Principal") not in ("*", {"AWS": "*"}), f"{lid}: key usable by anyone"


def _task_role_actions(s, service: str) -> tuple[set[str], list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    res = s.resources
    (task,) = [v for k, v in res.items() if v["Type"] == "AWS::ECS::TaskDefinition"
               and any(c.get("Name") == "app" and any(e["Name"] == "RADLOOP_SERVICE_NAME" and e["Value"] == service
                                                      for e in c.get("Environment", []))
                       for c in v["Properties"]["ContainerDefinitions"])]
    role_lid = _ref(task["Properties"]["TaskRoleArn"])
    role = res[role_lid]["Properties"]
    assert "Policies" not in role
    stmts = []
    for arn in role.get("ManagedPolicyArns", []):
        stmts.extend(res[_ref(arn)]["Properties"]["PolicyDocument"]["Statement"])
    for _lid, r in res.items():  # policies attached from the policy side
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") and any(
                _ref(x) == role_lid for x in r["Properties"].get("Roles", [])):
            stmts.extend(r["Properties"]["PolicyDocument"]["Statement"])
    actions = {a for st in stmts if st["Effect"] == "Allow" for a in _as_list(st["Action"])}
    return actions, stmts


def test_each_service_role_allows_exactly_its_declared_needs(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    bucket_lid = {v["Properties"].get("BucketName"): k for k, v in s.of_type("AWS::S3::Bucket").items()}
    table_lid = {v["Properties"]["TableName"]: k for k, v in s.of_type("AWS::DynamoDB::Table").items()}
    for service in SERVICES:
        actions, stmts = _task_role_actions(s, service)
        assert actions == N.expected_actions(service), service
        need = N.NEEDS[service]
        allowed_buckets = {bucket_lid[topo.bucket(x.bucket)] for x in need.s3}
        allowed_tables = {table_lid[topo.table(t)] for t in need.tables}
        for st in stmts:
            acts = _as_list(st["Action"])
            for r in _as_list(st["Resource"]):
                refs = [x.get("Fn::GetAtt", [None])[0] for x in r["Fn::Join"][1] if isinstance(x, dict)] \
                    if isinstance(r, dict) and "Fn::Join" in r else [_ref(r)]
                if any(a.startswith("s3:") for a in acts):
                    assert set(refs) <= allowed_buckets, f"{service}: {acts} on {refs}"
                if any(a.startswith("dynamodb:") for a in acts):
                    assert set(refs) <= allowed_tables, f"{service}: {acts} on {refs}"


# -- compute ---------------------------------------------------------------------------------------------------------
def test_one_ecs_service_per_radloop_service_with_health_checks_and_circuit_breaker(synth, env) -> None:
    s = synth[env]
    cfg = env_config(env)
    services = {v["Properties"]["ServiceName"]: v["Properties"] for v in s.of_type("AWS::ECS::Service").values()}
    assert set(services) == {x.replace("_", "-") for x in SERVICES}
    for name, p in services.items():
        dc = p["DeploymentConfiguration"]
        assert dc["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
        assert p["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
        provider = p["CapacityProviderStrategy"][0]["CapacityProvider"]
        worker = N.NEEDS[name.replace("-", "_")].kind == "worker"
        assert provider == ("FARGATE_SPOT" if worker and cfg.spot_workers else "FARGATE"), name
    for td in s.of_type("AWS::ECS::TaskDefinition").values():
        app = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "app")
        assert app["HealthCheck"]["Command"][0] == "CMD"
        assert app["ReadonlyRootFilesystem"] is True and app["User"] == "10001"
        otel = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "otel-collector")
        cfg = yaml.safe_load(next(e["Value"] for e in otel["Environment"] if e["Name"] == "AOT_CONFIG_CONTENT"))
        shared = yaml.safe_load((REPO / "infra" / "otel-collector.yaml").read_text())
        assert cfg["receivers"] == shared["receivers"] and cfg["processors"] == shared["processors"]
        assert cfg["service"]["pipelines"]["traces"]["exporters"] == ["awsxray"]
    policies = s.of_type("AWS::ApplicationAutoScaling::ScalingPolicy")
    backlog = [p for p in policies.values() if "backlog" in p["Properties"]["PolicyName"]]
    assert len(backlog) == sum(1 for x in SERVICES if N.NEEDS[x].kind == "worker")


def test_alb_routes_are_the_topology_routes(synth, env) -> None:
    s = synth[env]
    tg_port = {k: v["Properties"]["Port"] for k, v in s.of_type("AWS::ElasticLoadBalancingV2::TargetGroup").items()}
    port_service = {DEFAULT_PORTS[x]: x for x in http_services()}
    rules = sorted(s.of_type("AWS::ElasticLoadBalancingV2::ListenerRule").values(),
                   key=lambda r: r["Properties"]["Priority"])
    rendered = []
    for r in rules:
        p = r["Properties"]
        conds = {c["Field"]: c for c in p["Conditions"]}
        paths = conds["path-pattern"]["PathPatternConfig"]["Values"]
        methods = conds.get("http-request-method", {}).get("HttpRequestMethodConfig", {}).get("Values")
        service = port_service[tg_port[_ref(p["Actions"][0]["TargetGroupArn"])]]
        rendered.append((paths[0], frozenset(methods) if methods else None, service))
    assert rendered == list(ROUTES)
    (listener,) = [v for v in s.of_type("AWS::ElasticLoadBalancingV2::Listener").values()
                   if v["Properties"]["Protocol"] == "HTTPS"]
    assert listener["Properties"]["Certificates"]
    lbs = s.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert all(lb["Properties"]["Scheme"] == "internal" for lb in lbs)


def test_network_is_private_with_endpoints_and_flow_logs(synth, env) -> None:
    s = synth[env]
    assert not s.of_type("AWS::EC2::InternetGateway") and not s.of_type("AWS::EC2::NatGateway")
    subnets = s.of_type("AWS::EC2::Subnet")
    assert len(subnets) == 2 and all(not v["Properties"].get("MapPublicIpOnLaunch") for v in subnets.values())
    assert len({v["Properties"]["AvailabilityZone"] for v in subnets.values()}) == 2
    names = set()
    for e in s.of_type("AWS::EC2::VPCEndpoint").values():
        sn = e["Properties"]["ServiceName"]
        names.add(sn if isinstance(sn, str) else "".join(x for x in sn["Fn::Join"][1] if isinstance(x, str)))
    for svc in ("s3", "dynamodb", "sqs", "events", "ecr.api", "ecr.dkr", "logs", "sts", "sagemaker.api"):
        assert any(n.endswith(f".{svc}") for n in names), f"no {svc} endpoint in {sorted(names)}"
    (flow,) = s.of_type("AWS::EC2::FlowLog").values()
    assert flow["Properties"]["TrafficType"] == "ALL"


def test_log_groups_are_encrypted_with_environment_retention(synth, env) -> None:
    s = synth[env]
    groups = s.of_type("AWS::Logs::LogGroup")
    expected = PROD_LOG_RETENTION_DAYS if env == "prod" else env_config(env).log_retention_days
    for lid, g in groups.items():
        assert _ref(g["Properties"]["KmsKeyId"]), lid
        assert g["Properties"]["RetentionInDays"] == expected, lid
    if env == "prod":
        assert expected == 2557  # seven years


def test_alarms_cover_dlqs_5xx_unhealthy_pipeline_and_degradation(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    alarms = {v["Properties"]["AlarmName"]: v["Properties"] for v in s.of_type("AWS::CloudWatch::Alarm").values()}
    for q in topo.queues:
        assert f"{topo.prefix}-{q}-dlq-not-empty" in alarms
    for svc in http_services():
        assert f"{topo.prefix}-{svc}-5xx-rate" in alarms
    for svc in SERVICES:
        assert f"{topo.prefix}-{svc}-unhealthy-tasks" in alarms
    assert f"{topo.prefix}-PipelineFailed" in alarms and f"{topo.prefix}-ModelDegraded" in alarms
    assert f"{topo.prefix}-ModelDrift" in alarms
    (topic,) = s.of_type("AWS::SNS::Topic").values()
    assert _ref(topic["Properties"]["KmsMasterKeyId"])
    # drift reaches the same topic through its own rule (docs/triage.md)
    (drift,) = [r["Properties"] for r in s.of_type("AWS::Events::Rule").values()
                if r["Properties"].get("Name") == f"{topo.prefix}-model-drift"]
    assert drift["EventPattern"]["detail-type"] == ["DriftDetected"]
    assert [_ref(t["Arn"]) for t in drift["Targets"]] == list(s.of_type("AWS::SNS::Topic"))
    for a in alarms.values():
        assert a["AlarmActions"], a["AlarmName"]


def test_sagemaker_group_repo_and_pipeline(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    (group,) = s.of_type("AWS::SageMaker::ModelPackageGroup").values()
    assert group["Properties"]["ModelPackageGroupName"] == topo.model_package_group
    (repo,) = s.of_type("AWS::ECR::Repository").values()
    assert repo["Properties"]["ImageTagMutability"] == "IMMUTABLE"
    assert repo["Properties"]["EncryptionConfiguration"]["EncryptionType"] == "KMS"
    (pipe,) = s.of_type("AWS::SageMaker::Pipeline").values()
    from training.pipeline import PipelineConfig

    assert pipe["Properties"]["PipelineName"] == PipelineConfig(prefix=topo.prefix).pipeline_name
    orch = [v for v in s.of_type("AWS::ECS::TaskDefinition").values()
            if any(e["Value"] == "pipeline_orchestrator" for c in v["Properties"]["ContainerDefinitions"]
                   for e in c.get("Environment", []) if e["Name"] == "RADLOOP_SERVICE_NAME")]
    env_vars = {e["Name"]: e["Value"] for e in orch[0]["Properties"]["ContainerDefinitions"][0]["Environment"]}
    assert env_vars["RADLOOP_PIPELINE_NAME"] == pipe["Properties"]["PipelineName"]


def test_task_environment_matches_the_settings_and_passes_their_production_checks(synth, env, monkeypatch) -> None:
    """Every variable a task gets is a field of its service's settings, and those settings accept the values in
    dev/prod (where they refuse development keys and wildcard AE titles): the service would start."""
    from tests.infra.conftest import accepted_env_names, resolved, settings_class

    s = synth[env]
    seen = set()
    for td in s.of_type("AWS::ECS::TaskDefinition").values():
        app = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "app")
        values = {e["Name"]: e["Value"] for e in app["Environment"]}
        service = values["RADLOOP_SERVICE_NAME"]
        seen.add(service)
        cls = settings_class(service)
        accepted = accepted_env_names(cls)
        secrets = {x["Name"] for x in app.get("Secrets", [])}
        for name in [*values, *secrets]:
            assert name in accepted or name.startswith(("AWS_", "OTEL_")), f"{service}: {name} is not a setting"
        with monkeypatch.context() as m:
            for k in [k for k in __import__("os").environ if k.startswith("RADLOOP_")]:
                m.delenv(k)
            for k, v in values.items():
                m.setenv(k, resolved(k, v))
            for k in secrets:
                m.setenv(k, "x" * 64)  # Secrets Manager generates 64 characters
            settings = cls()
        assert settings.environment == env and settings.port == DEFAULT_PORTS[service]
    assert seen == set(SERVICES)



def test_the_services_that_build_urls_are_told_the_albs_https_origin(synth, env) -> None:
    """Behind the ALB, STOW-RS and QIDO-RS RetrieveURLs name https and the ALB's name (it passes the client's Host
    over plain HTTP, and is not a proxy whose forwarded headers they believe): RADLOOP_PUBLIC_BASE_URL is set for
    exactly the services whose settings read it, from the deploy parameter or the ALB's DNS name."""
    from shared.forwarded import ForwardingSettings
    from tests.infra.conftest import settings_class

    assert {s for s in SERVICES if issubclass(settings_class(s), ForwardingSettings)} == set(PUBLIC_ORIGIN_SERVICES)
    s = synth[env]
    (alb,) = [k for k, v in s.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer").items()
              if v["Properties"].get("Type", "application") == "application"]
    for td in s.of_type("AWS::ECS::TaskDefinition").values():
        app = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "app")
        values = {e["Name"]: e["Value"] for e in app["Environment"]}
        if values["RADLOOP_SERVICE_NAME"] in PUBLIC_ORIGIN_SERVICES:
            assert values["RADLOOP_PUBLIC_BASE_URL"] == {"Fn::Join": ["", ["https://", {"Fn::GetAtt": [
                alb, "DNSName"]}]]}
        else:
            assert "RADLOOP_PUBLIC_BASE_URL" not in values



def _app_env(s: Any, service: str) -> dict[str, Any]:
    for td in s.of_type("AWS::ECS::TaskDefinition").values():
        app = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "app")
        values = {e["Name"]: e["Value"] for e in app["Environment"]}
        if values["RADLOOP_SERVICE_NAME"] == service:
            return values
    raise AssertionError(f"no task definition for {service}")


def test_triage_rescores_large_passes_with_the_training_image_only_when_the_deployment_names_it(
        synth, synth_healthimaging, env) -> None:
    """Issue #18: a large re-scoring backlog runs as a SageMaker Batch Transform job of the training image (its
    ``serve`` entry point), as the pipeline's role. Without a training image tag the tasks re-score every pass."""
    from tests.infra.conftest import TRAINING_IMAGE_TAG

    plain = _app_env(synth[env], "triage")
    assert plain["RADLOOP_TRIAGE_TRANSFORM_MIN"] == "0"
    assert "RADLOOP_TRIAGE_TRANSFORM_EXECUTOR" not in plain
    hi = _app_env(synth_healthimaging, "triage")
    assert hi["RADLOOP_TRIAGE_TRANSFORM_EXECUTOR"] == "sagemaker"
    assert "RADLOOP_TRIAGE_TRANSFORM_MIN" not in hi  # the setting's default
    image = hi["RADLOOP_TRIAGE_TRANSFORM_IMAGE_URI"]["Fn::Join"]
    assert image[0] == ":" and image[1][1] == TRAINING_IMAGE_TAG and "TrainingRepo" in json.dumps(image[1][0])
    assert "PipelineRole" in json.dumps(hi["RADLOOP_TRIAGE_TRANSFORM_ROLE_ARN"])
