"""AWS HealthImaging as the image store (issue 22), on the template synthesized with ``-c image_store=healthimaging``.

- the datastore exists, encrypted with the data key (the platform's key for PHI at rest), retained in prod;
- the import role trusts HealthImaging for this account and this datastore only, and may read the import prefix,
  write the output prefix and use the data key, nothing else;
- the rule sends this datastore's terminal import-job events to ingestion's queue, whose policy admits it;
- ingestion, the gateway and triage get exactly their declared grants, on this datastore only (no ``*`` action, no
  other datastore), and the settings the services read;
- a ``radloop`` deployment synthesizes none of it.

cfn-lint, checkov and cdk-nag run on this template in test_checks.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.radloop_infra import healthimaging as H
from infra.radloop_infra import needs as N
from shared.storage import IMPORTS_PREFIX
from shared.topology import SERVICES, build_topology
from tests.infra.conftest import ENVS, Synth
from tests.infra.test_stack import _as_list, _identity_statements, _ref, _task_role_actions

HI_SERVICES = {s for s, n in N.NEEDS.items() if n.healthimaging}


def _only(s: Synth, rtype: str) -> tuple[str, dict[str, Any]]:
    (item,) = s.of_type(rtype).items()
    return item


def _data_key(s: Synth) -> str:
    prefix = s.stack.params.prefix
    (alias,) = [v for v in s.of_type("AWS::KMS::Alias").values()
                if v["Properties"]["AliasName"] == f"alias/{prefix}-data"]
    return _ref(alias["Properties"]["TargetKeyId"])  # type: ignore[return-value]


def _refs(x: Any) -> set[str]:
    """Every logical id a value points at (Ref, GetAtt, also inside Fn::Join), pseudo parameters left out."""
    out: set[str] = set()
    if isinstance(x, dict):
        if (r := _ref(x)) is not None and not r.startswith("AWS::"):
            out.add(r)
        for v in x.values():
            out |= _refs(v)
    elif isinstance(x, list):
        for v in x:
            out |= _refs(v)
    return out


def _bucket(s: Synth, role: str) -> str:
    name = build_topology(s.stack.params.prefix).bucket(role)
    return next(k for k, v in s.of_type("AWS::S3::Bucket").items() if v["Properties"].get("BucketName") == name)


def _object_suffixes(resource: Any) -> set[str]:
    """The key pattern of an object ARN (``/healthimaging/import/*``): the last literal of its Fn::Join."""
    return {r["Fn::Join"][1][-1] for r in _as_list(resource) if isinstance(r, dict) and "Fn::Join" in r}


@pytest.fixture(scope="module")
def hi(synth_healthimaging) -> Synth:
    return synth_healthimaging


# -- nothing changes with radloop's own store ----------------------------------------------------------------------
@pytest.mark.parametrize("env", ENVS)
def test_the_radloop_choice_synthesizes_nothing_of_healthimaging(synth, env) -> None:
    s = synth[env]
    assert s.stack.params.image_store == "radloop"
    text = json.dumps(s.template)
    assert "HealthImaging" not in text and "medical-imaging" not in text
    for td in s.of_type("AWS::ECS::TaskDefinition").values():
        for c in td["Properties"]["ContainerDefinitions"]:
            names = {e["Name"] for e in c.get("Environment", [])}
            assert not names & {H.SETTING_IMAGE_STORE, H.SETTING_DATASTORE_ID, H.SETTING_IMPORT_ROLE_ARN,
                                H.SETTING_IMPORT_PREFIX, H.SETTING_OUTPUT_PREFIX}, names


# -- the datastore --------------------------------------------------------------------------------------------------
def test_datastore_is_encrypted_with_the_platform_data_key_and_kept_in_prod(hi) -> None:
    lid, ds = _only(hi, "AWS::HealthImaging::Datastore")
    props = ds["Properties"]
    assert _refs(props["KmsKeyArn"]) == {_data_key(hi)}, props["KmsKeyArn"]
    assert props["DatastoreName"] == f"{hi.stack.params.prefix}-images"
    assert props["Tags"]["data-classification"] == "phi"
    assert ds["DeletionPolicy"] == "Retain" and ds["UpdateReplacePolicy"] == "Retain"  # prod keeps its images
    key = hi.resources[_data_key(hi)]["Properties"]
    assert key["EnableKeyRotation"] is True


# -- the import role ------------------------------------------------------------------------------------------------
def _import_role(s: Synth) -> tuple[str, dict[str, Any]]:
    roles = {k: v for k, v in s.of_type("AWS::IAM::Role").items()
             if any(st["Principal"].get("Service") == H.SERVICE_PRINCIPAL
                    for st in v["Properties"]["AssumeRolePolicyDocument"]["Statement"])}
    (item,) = roles.items()
    return item


def test_import_role_trusts_healthimaging_for_this_account_and_datastore_only(hi) -> None:
    ds_lid, _ = _only(hi, "AWS::HealthImaging::Datastore")
    _lid, role = _import_role(hi)
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Effect"] == "Allow" and trust["Action"] == "sts:AssumeRole"
    assert trust["Principal"] == {"Service": H.SERVICE_PRINCIPAL}
    cond = trust["Condition"]
    assert cond["StringEquals"]["aws:SourceAccount"] == hi.stack.params.account
    assert cond["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": [ds_lid, "DatastoreArn"]}
    assert "Policies" not in role["Properties"], "no inline policy on an application role"


def test_import_role_reads_the_import_prefix_writes_the_output_prefix_and_nothing_else(hi) -> None:
    lid, role = _import_role(hi)
    ingest, key = _bucket(hi, "ingestion"), _data_key(hi)
    (policy_ref,) = role["Properties"]["ManagedPolicyArns"]
    stmts = hi.resources[_ref(policy_ref)]["Properties"]["PolicyDocument"]["Statement"]
    attached = [k for k, v in hi.resources.items() if v["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
                and any(_ref(r) == lid for r in v["Properties"].get("Roles", []))]
    assert not attached, f"policies attached to the import role from elsewhere: {attached}"
    by_action = {tuple(sorted(_as_list(st["Action"]))): st for st in stmts}
    assert set(by_action) == {("s3:GetObject",), ("s3:PutObject",), ("s3:ListBucket",),
                              ("kms:Decrypt", "kms:GenerateDataKey")}
    assert all(st["Effect"] == "Allow" for st in stmts)
    get, put = by_action[("s3:GetObject",)], by_action[("s3:PutObject",)]
    assert _refs(get["Resource"]) == {ingest} and _object_suffixes(get["Resource"]) == {
        f"/{N.HEALTHIMAGING_IMPORT_PREFIX}*"}
    assert _refs(put["Resource"]) == {ingest} and _object_suffixes(put["Resource"]) == {
        f"/{N.HEALTHIMAGING_OUTPUT_PREFIX}*"}
    listing = by_action[("s3:ListBucket",)]
    assert _refs(listing["Resource"]) == {ingest}
    assert sorted(listing["Condition"]["StringLike"]["s3:prefix"]) == sorted(
        [f"{N.HEALTHIMAGING_IMPORT_PREFIX}*", f"{N.HEALTHIMAGING_OUTPUT_PREFIX}*"])
    assert _refs(by_action[("kms:Decrypt", "kms:GenerateDataKey")]["Resource"]) == {key}


def test_staged_instances_are_not_drop_folder_uploads() -> None:
    """The S3-imports rule matches keys under ``imports/``: a staged instance there would be ingested twice."""
    for prefix in (N.HEALTHIMAGING_IMPORT_PREFIX, N.HEALTHIMAGING_OUTPUT_PREFIX):
        assert not prefix.startswith(IMPORTS_PREFIX) and prefix.endswith("/")
    assert N.HEALTHIMAGING_IMPORT_PREFIX != N.HEALTHIMAGING_OUTPUT_PREFIX


def test_job_output_expires_and_kept_originals_do_not(hi, synth) -> None:
    def rules(s: Synth) -> dict[str, int]:
        lifecycle = s.resources[_bucket(s, "ingestion")]["Properties"]["LifecycleConfiguration"]["Rules"]
        return {r["Prefix"]: r["ExpirationInDays"] for r in lifecycle if "Prefix" in r and "ExpirationInDays" in r}

    with_hi = rules(hi)
    assert with_hi[N.HEALTHIMAGING_OUTPUT_PREFIX] >= 30  # the record of refused instances stays a month
    # the staged instances are the originals WADO-RS returns: nothing expires them (a broader rule would too)
    assert not any(N.HEALTHIMAGING_IMPORT_PREFIX.startswith(prefix) for prefix in with_hi), with_hi
    assert N.HEALTHIMAGING_OUTPUT_PREFIX not in rules(synth["prod"])


# -- the import-job rule --------------------------------------------------------------------------------------------
def test_import_job_events_of_this_datastore_reach_ingestions_queue(hi) -> None:
    ds_lid, _ = _only(hi, "AWS::HealthImaging::Datastore")
    topo = build_topology(hi.stack.params.prefix)
    queue_names = {k: v["Properties"]["QueueName"] for k, v in hi.of_type("AWS::SQS::Queue").items()}
    rules = {k: v["Properties"] for k, v in hi.of_type("AWS::Events::Rule").items()
             if v["Properties"].get("EventPattern", {}).get("source") == [H.EVENT_SOURCE]}
    (rule_lid, rule), = rules.items()
    assert rule["Name"] == H.import_job_rule(topo.prefix, "x").name
    assert rule.get("EventBusName", "default") == "default"  # AWS service events reach the default bus only
    assert rule["EventPattern"] == {
        "source": ["aws.medical-imaging"],
        "detail-type": ["Import Job Completed", "Import Job Failed"],
        "detail": {"datastoreId": [{"Fn::GetAtt": [ds_lid, "DatastoreId"]}]},
    }
    (target,) = rule["Targets"]
    assert queue_names[_ref(target["Arn"])] == topo.queue_for("ingestion").name
    assert queue_names[_ref(target["DeadLetterConfig"]["Arn"])] == f"{topo.prefix}-events-dlq"
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    # the queue's policy admits the rule (EventBridge could not deliver otherwise), and so does the rule DLQ's
    admitted: dict[str, set[str]] = {}
    for pol in hi.of_type("AWS::SQS::QueuePolicy").values():
        for st in pol["Properties"]["PolicyDocument"]["Statement"]:
            if st["Effect"] == "Allow" and st.get("Principal") == {"Service": "events.amazonaws.com"}:
                for q in pol["Properties"]["Queues"]:
                    admitted.setdefault(queue_names[_ref(q)], set()).update(
                        _refs(st["Condition"]["ArnEquals"]["aws:SourceArn"]))
    assert rule_lid in admitted[topo.queue_for("ingestion").name]
    assert rule_lid in admitted[f"{topo.prefix}-events-dlq"]
    assert not any(rule_lid in v for k, v in admitted.items()
                   if k not in (topo.queue_for("ingestion").name, f"{topo.prefix}-events-dlq"))


def test_topology_rules_are_rendered_unchanged_next_to_the_import_job_rule(hi) -> None:
    topo = build_topology(hi.stack.params.prefix)
    names = {v["Properties"]["Name"]: v["Properties"]["EventPattern"] for v in hi.of_type("AWS::Events::Rule").values()
             if "Name" in v["Properties"]}
    for r in topo.rules:
        assert names[r.name] == r.event_pattern


# -- the task roles -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", SERVICES)
def test_each_task_role_allows_exactly_its_declared_needs_with_healthimaging(hi, service) -> None:
    actions, _stmts = _task_role_actions(hi, service)
    assert actions == N.expected_actions(service, "healthimaging"), service
    has_hi = any(a.startswith("medical-imaging:") for a in actions)
    hi_need = N.healthimaging_need(service, "healthimaging")
    assert has_hi == bool(hi_need and N.HEALTHIMAGING_ACTIONS[hi_need.access]), service


def test_healthimaging_grants_name_this_datastore_and_the_data_key_only(hi) -> None:
    ds_lid, _ = _only(hi, "AWS::HealthImaging::Datastore")
    role_lid, _ = _import_role(hi)
    key = _data_key(hi)
    seen: dict[str, set[str]] = {}
    for service in SERVICES:
        _actions, stmts = _task_role_actions(hi, service)
        for st in stmts:
            acts = _as_list(st["Action"])
            hi_acts = [a for a in acts if a.startswith("medical-imaging:")]
            if hi_acts:
                assert not any(a.endswith(":*") or a == "*" for a in acts), st
                assert all(a in {x for v in N.HEALTHIMAGING_ACTIONS.values() for x in v} for a in hi_acts), st
                resources = _as_list(st["Resource"])
                assert "*" not in resources and _refs(resources) == {ds_lid}, f"{service}: {st}"
                # the datastore itself and its image sets, nothing wider
                assert {"Fn::GetAtt": [ds_lid, "DatastoreArn"]} in resources
                assert any("/imageset/*" in json.dumps(r) for r in resources)
                seen.setdefault(service, set()).update(hi_acts)
            if "iam:PassRole" in acts and st.get("Sid") == "PassHealthImagingImportRole":
                assert _refs(st["Resource"]) == {role_lid}
                assert st["Condition"] == {"StringEquals": {"iam:PassedToService": H.SERVICE_PRINCIPAL}}
                seen.setdefault(service, set()).add("iam:PassRole")
            if "kms:DescribeKey" in acts:
                assert _refs(st["Resource"]) == {key}, st
    assert seen == {
        "ingestion": {"medical-imaging:StartDICOMImportJob", "medical-imaging:GetDICOMImportJob",
                      "medical-imaging:GetImageSetMetadata", "iam:PassRole"},
        "streaming_gateway": {"medical-imaging:GetImageFrame", "medical-imaging:GetImageSetMetadata"},
        "triage": {"medical-imaging:GetImageFrame", "medical-imaging:GetImageSetMetadata"},
    }


def _ingest_bucket_access(s: Synth, service: str) -> tuple[set[str], set[str]]:
    """(key patterns the service may put, key patterns it may get) in the ingestion bucket."""
    ingest = _bucket(s, "ingestion")
    _actions, stmts = _task_role_actions(s, service)
    puts, gets = set(), set()
    for st in stmts:
        acts = _as_list(st["Action"])
        if ingest in _refs(st["Resource"]):
            if "s3:PutObject" in acts:
                puts |= _object_suffixes(st["Resource"])
            if "s3:GetObject" in acts:
                gets |= _object_suffixes(st["Resource"])
    return puts, gets


def test_ingestion_stages_instances_and_reads_job_output_the_gateway_reads_kept_originals(hi) -> None:
    staged, output = f"/{N.HEALTHIMAGING_IMPORT_PREFIX}*", f"/{N.HEALTHIMAGING_OUTPUT_PREFIX}*"
    puts, gets = _ingest_bucket_access(hi, "ingestion")
    assert staged in puts and output not in puts
    assert output in gets and staged not in gets
    puts, gets = _ingest_bucket_access(hi, "streaming_gateway")
    assert not puts and gets == {staged}  # WADO-RS instance retrieval returns the staged P10 object
    # interop builds results from the kept original and answers C-GET/C-MOVE with it; it writes only its drop prefix
    puts, gets = _ingest_bucket_access(hi, "interop")
    assert gets == {staged} and puts == {"/imports/interop/*"}
    assert _ingest_bucket_access(hi, "triage") == (set(), set())


def _pipeline_role_statements(s: Synth) -> list[dict[str, Any]]:
    (policy,) = [r for r in s.of_type("AWS::IAM::ManagedPolicy").values()
                 if r["Properties"].get("Description") == "SageMaker pipeline steps (least privilege)"]
    return list(policy["Properties"]["PolicyDocument"]["Statement"])


def test_the_pipeline_reads_frames_and_metadata_from_this_datastore_only(hi, synth) -> None:
    """training/preprocess.py reads a HealthImaging record's frame (GetImageFrame) and its image set's metadata."""
    ds_lid, _ = _only(hi, "AWS::HealthImaging::Datastore")
    (st,) = [st for st in _pipeline_role_statements(hi) if any(
        a.startswith("medical-imaging:") for a in _as_list(st["Action"]))]
    assert set(_as_list(st["Action"])) == {"medical-imaging:GetImageFrame", "medical-imaging:GetImageSetMetadata"}
    assert _refs(st["Resource"]) == {ds_lid} and any("/imageset/*" in json.dumps(r) for r in st["Resource"])
    assert not [st for st in _pipeline_role_statements(synth["prod"]) if any(
        a.startswith("medical-imaging:") for a in _as_list(st["Action"]))]


@pytest.mark.parametrize("service", sorted(HI_SERVICES))
def test_healthimaging_tables_are_granted(hi, service) -> None:
    """Ingestion keeps batches and jobs in the state table; triage finds image sets in the instance index."""
    topo = build_topology(hi.stack.params.prefix)
    by_name = {v["Properties"]["TableName"]: k for k, v in hi.of_type("AWS::DynamoDB::Table").items()}
    _actions, stmts = _task_role_actions(hi, service)
    granted: dict[str, set[str]] = {}
    for st in stmts:
        acts = {a for a in _as_list(st["Action"]) if a.startswith("dynamodb:")}
        for lid in _refs(st["Resource"]) & set(by_name.values()):
            granted.setdefault(lid, set()).update(acts)
    expected = {by_name[topo.table(role)]: set(N.DDB_ACTIONS[level])
                for role, level in N.table_needs(service, "healthimaging").items()}
    assert granted == expected
    extra = {"ingestion": ("state", "read_write"), "triage": ("instances", "read")}.get(service)
    if extra:
        assert set(N.DDB_ACTIONS[extra[1]]) <= granted[by_name[topo.table(extra[0])]]


def test_no_wildcard_actions_and_statement_ids_are_unique(hi) -> None:
    for lid, st in _identity_statements(hi.resources):
        if st["Effect"] == "Allow":
            actions = _as_list(st.get("Action", []))
            assert not any(a == "*" or a.endswith(":*") for a in actions), f"{lid}: {actions}"
    for lid, r in hi.resources.items():
        if r["Type"] == "AWS::IAM::ManagedPolicy":
            sids = [st.get("Sid") for st in r["Properties"]["PolicyDocument"]["Statement"] if st.get("Sid")]
            assert len(sids) == len(set(sids)), f"{lid}: duplicate statement ids {sids}"


# -- what the services are told -------------------------------------------------------------------------------------
def test_the_services_that_touch_images_get_the_store_settings(hi) -> None:
    ds_lid, _ = _only(hi, "AWS::HealthImaging::Datastore")
    role_lid, _ = _import_role(hi)
    seen = set()
    for td in hi.of_type("AWS::ECS::TaskDefinition").values():
        app = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "app")
        env = {e["Name"]: e["Value"] for e in app["Environment"]}
        service = env["RADLOOP_SERVICE_NAME"]
        seen.add(service)
        if service not in HI_SERVICES:
            assert H.SETTING_IMAGE_STORE not in env and H.SETTING_DATASTORE_ID not in env, service
            continue
        assert env[H.SETTING_IMAGE_STORE] == "healthimaging"
        assert env[H.SETTING_DATASTORE_ID] == {"Fn::GetAtt": [ds_lid, "DatastoreId"]}
        # the store's settings want the role wherever image_store=healthimaging; only ingestion may pass it
        assert env[H.SETTING_IMPORT_ROLE_ARN] == {"Fn::GetAtt": [role_lid, "Arn"]}
        # the prefixes the grants name, so the code writes and reads where it is allowed to
        assert env[H.SETTING_IMPORT_PREFIX] == N.HEALTHIMAGING_IMPORT_PREFIX
        assert env[H.SETTING_OUTPUT_PREFIX] == N.HEALTHIMAGING_OUTPUT_PREFIX
    assert seen == set(SERVICES)


def test_the_store_settings_are_settings_the_services_read(hi, monkeypatch) -> None:
    """Each variable is a field of the service's settings, which accept the values: the task would start."""
    from tests.infra.conftest import accepted_env_names, resolved, settings_class

    for td in hi.of_type("AWS::ECS::TaskDefinition").values():
        app = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "app")
        values = {e["Name"]: e["Value"] for e in app["Environment"]}
        service = values["RADLOOP_SERVICE_NAME"]
        if service not in HI_SERVICES:
            continue
        cls = settings_class(service)
        missing = {n for n in values if n.startswith("RADLOOP_HEALTHIMAGING_") or n == H.SETTING_IMAGE_STORE} - \
            accepted_env_names(cls)
        assert not missing, f"{service}: {sorted(missing)} are not settings of {cls.__name__}"
        with monkeypatch.context() as m:
            for k in [k for k in __import__("os").environ if k.startswith("RADLOOP_")]:
                m.delenv(k)
            for k, v in values.items():
                m.setenv(k, resolved(k, v))
            for x in app.get("Secrets", []):
                m.setenv(x["Name"], "x" * 64)
            settings = cls()
        assert getattr(settings, "image_store", None) == "healthimaging", service


# -- network and audit ----------------------------------------------------------------------------------------------
def test_tasks_reach_healthimaging_through_interface_endpoints(hi, synth) -> None:
    def endpoint_names(s: Synth) -> set[str]:
        out = set()
        for e in s.of_type("AWS::EC2::VPCEndpoint").values():
            sn = e["Properties"]["ServiceName"]
            out.add(sn if isinstance(sn, str) else "".join(x for x in sn["Fn::Join"][1] if isinstance(x, str)))
        return out

    names = endpoint_names(hi)
    for svc in ("medical-imaging", "runtime-medical-imaging"):
        assert any(n.endswith(f".{svc}") for n in names), f"no {svc} endpoint in {sorted(names)}"
    assert not any("medical-imaging" in n for n in endpoint_names(synth["prod"]))
    for e in hi.of_type("AWS::EC2::VPCEndpoint").values():
        if e["Properties"].get("VpcEndpointType") == "Interface":
            assert e["Properties"]["PrivateDnsEnabled"] is True


def test_the_trail_records_healthimaging_data_events(hi) -> None:
    ds_lid, _ = _only(hi, "AWS::HealthImaging::Datastore")
    _lid, trail = _only(hi, "AWS::CloudTrail::Trail")
    logged = {}
    for sel in trail["Properties"]["AdvancedEventSelectors"]:
        f = {x["Field"]: x for x in sel["FieldSelectors"]}
        if f["eventCategory"]["Equals"] == ["Data"]:
            (rtype,) = f["resources.type"]["Equals"]
            assert "readOnly" not in f, "reads of images are logged as well as writes"
            logged[rtype] = _refs(f["resources.ARN"])
    assert logged["AWS::MedicalImaging::Datastore"] == {ds_lid}
    assert logged["AWS::MedicalImaging::Imageset"] == {ds_lid}


def test_the_stack_outputs_the_datastore_and_the_import_role(hi) -> None:
    outputs = hi.template["Outputs"]
    assert _refs(outputs["HealthImagingDatastoreId"]["Value"]) == {_only(hi, "AWS::HealthImaging::Datastore")[0]}
    assert _refs(outputs["HealthImagingImportRoleArn"]["Value"]) == {_import_role(hi)[0]}
