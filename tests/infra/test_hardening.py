"""The security and reliability review's infrastructure items, checked on the synthesized templates.

- every container's ECS ``stopTimeout`` derives from the shared ``drain_timeout_s`` (one source);
- drop-folder imports outlive the DLQ that may still hold their message (a redrive finds the file);
- CloudTrail records data events of every PHI table and bucket; the audit table is append-only for every role;
- ingestion may write ``quarantine/``;
- the DIMSE NLB admits only the PACS CIDRs;
- the inline-policy acknowledgement covers CDK's own roles only, and the access-log suppressions say what is in
  those logs (URLs with query strings) and what protects them;
- the ECS collector sidecar runs the redaction processor on every traces pipeline.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from infra.radloop_infra.suppressions import SUPPRESSIONS
from shared.topology import SERVICES, build_topology
from tests.infra.conftest import CLIENT_CIDRS, ENVS, IDP_CONTEXT, PACS_CIDRS, REPO, settings_class

DAY_S = 86_400
#: Fargate's longest stopTimeout.
FARGATE_MAX_STOP_TIMEOUT_S = 120


def _topology(synth, env):  # type: ignore[no-untyped-def]
    return build_topology(synth[env].stack.params.prefix)


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def _ref(x: Any) -> str | None:
    if isinstance(x, dict):
        if "Ref" in x:
            return x["Ref"]
        if "Fn::GetAtt" in x:
            return x["Fn::GetAtt"][0]
    return None


def _containers(s) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """service -> its task definition's ``app`` container."""
    out = {}
    for td in s.of_type("AWS::ECS::TaskDefinition").values():
        app = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "app")
        env = {e["Name"]: e["Value"] for e in app["Environment"]}
        out[env["RADLOOP_SERVICE_NAME"]] = {**app, "env": env}
    return out


def _statements(res: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
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


def _resource_refs(resource: Any) -> set[str]:
    """Logical ids a statement's Resource entry points at (directly or inside an Fn::Join)."""
    if isinstance(resource, dict) and "Fn::Join" in resource:
        return {r for part in resource["Fn::Join"][1] if (r := _ref(part))}
    r = _ref(resource)
    return {r} if r else set()


# -- item 2: stopTimeout from the drain setting ------------------------------------------------------------------
@pytest.mark.parametrize("env", ENVS)
def test_stop_timeout_is_the_drain_timeout_plus_a_margin(synth, env) -> None:
    containers = _containers(synth[env])
    assert set(containers) == set(SERVICES)
    for service, app in containers.items():
        drain = settings_class(service).model_fields["drain_timeout_s"].default
        # the task is told the drain it was sized for, so the process and ECS cannot disagree
        assert float(app["env"]["RADLOOP_DRAIN_TIMEOUT_S"]) == drain, service
        stop = app["StopTimeout"]
        assert drain + 1 <= stop <= drain + 10, f"{service}: stopTimeout {stop} s for a {drain} s drain"
        assert stop <= FARGATE_MAX_STOP_TIMEOUT_S


# -- item 1: the identity provider reaches every container -------------------------------------------------------
@pytest.mark.parametrize("env", ENVS)
def test_every_container_gets_the_identity_provider_parameters(synth, env) -> None:
    for service, app in _containers(synth[env]).items():
        for name, value in IDP_CONTEXT.items():
            assert app["env"][f"RADLOOP_{name.upper()}"] == value, (service, name)


# -- item 3: imports outlive the DLQ -------------------------------------------------------------------------------
@pytest.mark.parametrize("env", ENVS)
def test_drop_folder_objects_expire_only_after_the_dlq_that_may_hold_their_message(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    (imports_rule,) = [r for r in topo.rules if r.event_pattern.get("source") == ["aws.s3"]]
    dlq_retention_s = topo.queues[imports_rule.target_queue].dlq_retention_s
    # EventBridge's own DLQ (undeliverable events) holds S3 notifications too
    rule_dlq = next(v for v in s.of_type("AWS::SQS::Queue").values()
                    if v["Properties"].get("QueueName") == f"{topo.prefix}-events-dlq")
    longest = max(dlq_retention_s, rule_dlq["Properties"]["MessageRetentionPeriod"])
    bucket = next(v for v in s.of_type("AWS::S3::Bucket").values()
                  if v["Properties"].get("BucketName") == topo.bucket("ingestion"))
    rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    for prefix in ("imports/", "imports-rejected/"):
        (rule,) = [r for r in rules if r.get("Prefix") == prefix and "ExpirationInDays" in r]
        assert rule["ExpirationInDays"] * DAY_S >= longest + DAY_S, (prefix, rule, longest)
    (imports,) = [r for r in rules if r.get("Prefix") == "imports/" and "ExpirationInDays" in r]
    assert imports["ExpirationInDays"] * DAY_S <= longest + 2 * DAY_S, "drop-folder leftovers still expire"


# -- item 5: audit trail and IAM -----------------------------------------------------------------------------------
@pytest.mark.parametrize("env", ENVS)
def test_trail_records_data_events_of_every_phi_table_and_bucket(synth, env) -> None:
    from infra.radloop_infra.observability import NON_PHI_TABLES

    s = synth[env]
    topo = _topology(synth, env)
    assert set(topo.tables) > NON_PHI_TABLES, "classify tables by topology role"
    table_lid = {v["Properties"]["TableName"]: k for k, v in s.of_type("AWS::DynamoDB::Table").items()}
    bucket_lid = {v["Properties"].get("BucketName"): k for k, v in s.of_type("AWS::S3::Bucket").items()}
    (trail,) = s.of_type("AWS::CloudTrail::Trail").values()
    selectors = trail["Properties"]["AdvancedEventSelectors"]
    assert "EventSelectors" not in trail["Properties"], "basic and advanced selectors cannot be mixed"

    def fields(sel: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {f["Field"]: f for f in sel["FieldSelectors"]}

    by_type: dict[str, set[str]] = {}
    management = False
    for sel in selectors:
        f = fields(sel)
        if f["eventCategory"]["Equals"] == ["Management"]:
            management = True
            continue
        assert f["eventCategory"]["Equals"] == ["Data"]
        assert "readOnly" not in f, "reads of PHI are logged as well as writes"
        (rtype,) = f["resources.type"]["Equals"]
        arns = f["resources.ARN"].get("Equals", []) + f["resources.ARN"].get("StartsWith", [])
        by_type.setdefault(rtype, set()).update(r for a in arns for r in _resource_refs(a))
    assert management
    phi_tables = {table_lid[topo.table(role)] for role in topo.tables if role not in NON_PHI_TABLES}
    assert {table_lid[topo.table(r)] for r in ("instances", "audit", "cases")} <= phi_tables
    assert by_type["AWS::DynamoDB::Table"] == phi_tables
    phi_buckets = {bucket_lid[spec.name] for spec in topo.buckets.values() if spec.holds_phi}
    assert phi_buckets and by_type["AWS::S3::Object"] == phi_buckets


@pytest.mark.parametrize("env", ENVS)
def test_no_role_may_change_or_delete_audit_records(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    audit = next(k for k, v in s.of_type("AWS::DynamoDB::Table").items()
                 if v["Properties"]["TableName"] == topo.table("audit"))
    writers = set()
    for lid, st in _statements(s.resources):
        if st["Effect"] != "Allow":
            continue
        refs = set().union(*(_resource_refs(r) for r in _as_list(st.get("Resource", []))))
        actions = {a for a in _as_list(st["Action"]) if a.startswith("dynamodb:")}
        if audit in refs and actions:
            assert actions == {"dynamodb:PutItem"}, f"{lid} may {sorted(actions)} on the audit table"
            writers.add(lid)
        if "*" in _as_list(st.get("Resource", [])):
            assert not actions, f"{lid}: {actions} on every table"
    assert len(writers) == len(SERVICES), "every service audits (append only)"


@pytest.mark.parametrize("env", ENVS)
def test_ingestion_may_write_quarantined_instances(synth, env) -> None:
    s = synth[env]
    topo = _topology(synth, env)
    ingest = next(k for k, v in s.of_type("AWS::S3::Bucket").items()
                  if v["Properties"].get("BucketName") == topo.bucket("ingestion"))
    containers = _containers(s)
    td = next(v for v in s.of_type("AWS::ECS::TaskDefinition").values()
              if any(c["Name"] == "app" and c["Image"] == containers["ingestion"]["Image"]
                     for c in v["Properties"]["ContainerDefinitions"]))
    role = _ref(td["Properties"]["TaskRoleArn"])
    policies = [_ref(a) for a in s.resources[role]["Properties"]["ManagedPolicyArns"]]
    puts = set()
    for lid in policies:
        for st in s.resources[lid]["Properties"]["PolicyDocument"]["Statement"]:
            if "s3:PutObject" in _as_list(st["Action"]):
                for r in _as_list(st["Resource"]):
                    if ingest in _resource_refs(r):
                        puts.add(r["Fn::Join"][1][-1])
    assert "/quarantine/*" in puts, puts


# -- item 7: the DIMSE NLB admits the PACS only --------------------------------------------------------------------
@pytest.mark.parametrize("env", ENVS)
def test_dimse_nlb_admits_only_the_pacs_cidrs(synth, env) -> None:
    from infra.radloop_infra.compute import DICOM_TLS_PORT

    s = synth[env]
    nlb = next(v for v in s.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
               if v["Properties"].get("Type") == "network")
    (sg_lid,) = [_ref(x) for x in nlb["Properties"]["SecurityGroups"]]
    ingress = s.resources[sg_lid]["Properties"].get("SecurityGroupIngress", [])
    ingress += [v["Properties"] for v in s.of_type("AWS::EC2::SecurityGroupIngress").values()
                if _ref(v["Properties"]["GroupId"]) == sg_lid]
    assert {r["CidrIp"] for r in ingress} == set(PACS_CIDRS.split(","))
    assert all((r["FromPort"], r["ToPort"], r["IpProtocol"]) == (DICOM_TLS_PORT, DICOM_TLS_PORT, "tcp")
               for r in ingress)
    # and the ALB keeps the hospital network's CIDRs (the two are separate parameters)
    alb = next(v for v in s.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
               if v["Properties"].get("Type", "application") == "application")
    (alb_sg,) = [_ref(x) for x in alb["Properties"]["SecurityGroups"]]
    assert {r["CidrIp"] for r in s.resources[alb_sg]["Properties"]["SecurityGroupIngress"]} == set(
        CLIENT_CIDRS.split(","))


# -- item 6: suppressions ------------------------------------------------------------------------------------------
def _inline_policy_ack():  # type: ignore[no-untyped-def]
    (ack,) = [x for x in SUPPRESSIONS if x.rule == "HIPAA.Security-IAMNoInlinePolicy"]
    return ack


@pytest.mark.parametrize("env", ENVS)
def test_inline_policy_acknowledgement_covers_cdk_generated_policies_only(synth, env) -> None:
    from aws_cdk import CfnResource

    ack = _inline_policy_ack()
    stack = synth[env].stack
    prefix = stack.node.path
    # a policy that carries application permissions is never acknowledged, whatever its resource type
    for path in (f"{prefix}/Compute/IngestionTaskRole/DefaultPolicy/Resource",
                 f"{prefix}/Compute/TriageTaskRole/DefaultPolicy/Resource",
                 f"{prefix}/Ml/PipelineRole/DefaultPolicy/Resource",
                 f"{prefix}/Compute/Anything/Resource"):
        assert not ack.match(path, "AWS::IAM::Policy", env), path
    policies = [c for c in stack.node.find_all() if isinstance(c, CfnResource)
                and c.cfn_resource_type == "AWS::IAM::Policy"]
    assert policies
    def lid(construct: Any) -> str:
        return stack.resolve(stack.get_logical_id(construct.node.default_child))

    app_roles = {lid(r) for r in stack.compute.task_roles.values()} | {lid(stack.ml.role)}
    for p in policies:
        assert ack.match(p.node.path, p.cfn_resource_type, env), \
            f"{p.node.path}: an inline policy nobody acknowledged (cdk-nag would report it)"
        roles = {_ref(r) for r in stack.resolve(p.roles)}  # type: ignore[attr-defined]
        assert not roles & app_roles, f"{p.node.path} is attached to an application role {roles & app_roles}"


def test_access_log_suppressions_say_what_the_logs_hold_and_what_protects_them() -> None:
    reasons = [x for x in SUPPRESSIONS if "access-log" in x.applies_to]
    assert {x.rule for x in reasons} >= {"HIPAA.Security-S3DefaultEncryptionKMS", "CKV_AWS_18"}
    for x in reasons:
        text = x.reason.lower()
        assert "not images" not in text and "no phi" not in text, x.reason
    kms = next(x.reason.lower() for x in reasons if x.rule == "HIPAA.Security-S3DefaultEncryptionKMS")
    for needed in ("query string", "encrypt", "public", "retention", "credentials"):
        assert needed in kms, f"the access-log reason does not mention {needed!r}: {kms}"
    doc = (REPO / "docs" / "security.md").read_text().lower()
    assert "query string" in doc and "access log" in doc


# -- item 4: the ECS collector config ------------------------------------------------------------------------------
@pytest.mark.parametrize("env", ENVS)
def test_ecs_collector_sidecar_redacts_every_traces_pipeline(synth, env) -> None:
    seen = 0
    for td in synth[env].of_type("AWS::ECS::TaskDefinition").values():
        coll = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "otel-collector")
        content = next(e["Value"] for e in coll["Environment"] if e["Name"] == "AOT_CONFIG_CONTENT")
        cfg = yaml.safe_load(content if isinstance(content, str) else json.dumps(content))
        for name, pipe in cfg["service"]["pipelines"].items():
            if name.split("/")[0] == "traces":
                assert "transform/redact" in pipe["processors"], name
                seen += 1
    assert seen >= len(SERVICES)
