"""Topology bootstrap and event routing against a real moto server process."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from shared import event_names as ev
from shared import events as E
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.publisher import EventPublisher
from shared.settings import Settings
from shared.topology import SUBSCRIPTIONS, build_topology
from tests.support.aws import drain_queue


async def _inventory(clients: AwsClients) -> dict[str, object]:
    topo = clients.settings.topology
    sqs, ddb, events, s3 = (await clients.sqs(), await clients.dynamodb(), await clients.events(), await clients.s3())
    queues = sorted(u.rsplit("/", 1)[1] for u in (await sqs.list_queues(QueueNamePrefix=topo.prefix)).get("QueueUrls", []))
    attrs = {}
    for q in topo.queues.values():
        url = (await sqs.get_queue_url(QueueName=q.name))["QueueUrl"]
        a = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
        attrs[q.name] = (a["VisibilityTimeout"], json.loads(a["RedrivePolicy"])["maxReceiveCount"])
    tables = []
    for spec in topo.tables.values():  # describe each: list_tables pages at 100 and other tests make many
        d = (await ddb.describe_table(TableName=spec.name))["Table"]
        tables.append((d["TableName"], sorted(i["IndexName"] for i in d.get("GlobalSecondaryIndexes", []))))
    tables.sort()
    rules = sorted(r["Name"] for r in (await events.list_rules(EventBusName=topo.bus_name))["Rules"])
    targets = {r: [t["Arn"] for t in (await events.list_targets_by_rule(Rule=r, EventBusName=topo.bus_name))["Targets"]]
               for r in rules}
    buckets = sorted(b["Name"] for b in (await s3.list_buckets())["Buckets"] if b["Name"].startswith(topo.prefix + "-"))
    return {"queues": queues, "attrs": attrs, "tables": tables, "rules": rules, "targets": targets, "buckets": buckets}


async def test_bootstrap_is_idempotent(clients: AwsClients) -> None:
    before = await _inventory(clients)
    await bootstrap_topology(clients)  # the fixture already ran it once
    after = await _inventory(clients)
    assert before == after
    topo = clients.settings.topology
    assert len(after["queues"]) == 2 * len(topo.queues)
    assert len(after["tables"]) == len(topo.tables)
    assert len(after["buckets"]) == len(topo.buckets)
    assert all(len(t) == 1 for t in after["targets"].values())
    assert after["attrs"][topo.queues["triage"].name] == (str(topo.queues["triage"].visibility_timeout_s),
                                                          topo.queues["triage"].max_receive_count)


def _sample(name: str) -> E.Event:
    uids = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"}
    samples: dict[str, E.Event] = {
        ev.INSTANCE_STORED: E.InstanceStored(
            **uids, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", modality="DX", number_of_frames=1, rows=8, columns=8,
            original_key="dicom/x.dcm", frames_prefix="frames/x", metadata_key="metadata/x.json",
            content_sha256="0" * 64, size_bytes=1, htj2k_bytes=1, patient_pseudo_id="p", source="stow"),
        ev.INSTANCE_REJECTED: E.InstanceRejected(source="stow", failure_reason=0xC000, reason="bad"),
        ev.INSTANCE_SCORED: E.InstanceScored(**uids, status="unscored"),
        ev.IMAGE_VERIFIED: E.ImageVerified(**uids, case_id="c", label="normal", label_version=1, resolution="single",
                                           reader="r", patient_pseudo_id="p", frame_key="frames/x/1.jph"),
        ev.TRAINING_STARTED: E.TrainingStarted(run_id="r", manifest_sha256="0" * 64, manifest_uri="s3://b/k",
                                               label_count=1, trigger="manual"),
        ev.TRAINING_COMPLETED: E.TrainingCompleted(run_id="r", status="Failed", manifest_sha256="0" * 64,
                                                   manifest_uri="s3://b/k"),
        ev.MODEL_REGISTERED: E.ModelRegistered(version=1, model_package_arn="arn", decision="pending", reason="r"),
        ev.MODEL_APPROVED: E.ModelApproved(version=1, model_package_arn="arn", model_artifact_uri="s3://b/m",
                                           threshold=0.5, approved_by="policy", reason="r"),
        ev.MODEL_PERFORMANCE_DEGRADED: E.ModelPerformanceDegraded(model_version=1, metric="auc", value=0.5, floor=0.8,
                                                                  sample_size=10),
        ev.DRIFT_DETECTED: E.DriftDetected(model_version=1, site="site-0123456789", modality="CR", feature="score",
                                           psi=0.4, threshold=0.25, window_images=200),
    }
    return samples[name]


async def test_each_event_reaches_exactly_the_subscribed_queues(clients: AwsClients) -> None:
    topo = clients.settings.topology
    publisher = EventPublisher(clients, "test")
    sent = {name: _sample(name) for name in ev.ALL}
    await publisher.publish_many(list(sent.values()))
    for service, q in topo.queues.items():
        got = await drain_queue(clients, q.name, wait_s=1.5)
        got_types = sorted(json.loads(m["Body"])["detail-type"] for m in got)
        expected = sorted(SUBSCRIPTIONS.get(service, ()))
        assert got_types == expected, f"{service} received {got_types}, expected {expected}"
        for m in got:
            body = json.loads(m["Body"])
            assert body["source"] == "radloop.test"
            assert body["detail"]["event_id"] == sent[body["detail-type"]].event_id
            assert body["detail"]["traceparent"], "the producer's trace context travels in the detail"


async def test_s3_imports_route_only_under_the_imports_prefix(clients: AwsClients) -> None:
    topo = clients.settings.topology
    s3 = await clients.s3()
    await s3.put_object(Bucket=topo.bucket("ingestion"), Key="imports/a/b.dcm", Body=b"x")
    await s3.put_object(Bucket=topo.bucket("ingestion"), Key="elsewhere/c.dcm", Body=b"x")
    got = await drain_queue(clients, topo.queues["ingestion"].name, wait_s=1.5)
    keys = [json.loads(m["Body"])["detail"]["object"]["key"] for m in got]
    assert keys == ["imports/a/b.dcm"]


def test_topology_names_derive_from_the_prefix() -> None:
    a, b = build_topology("alpha"), build_topology("beta")
    assert {q.name for q in a.queues.values()}.isdisjoint({q.name for q in b.queues.values()})
    assert all(t.name.startswith("alpha-") for t in a.tables.values())
    with pytest.raises(ValueError, match="lower-case"):
        build_topology("Bad_Prefix")


async def test_sync_bootstrap_works_while_an_event_loop_runs(make_settings: Callable[..., Settings]) -> None:
    """``bootstrap_sync`` (behind the ``deployment`` fixture) bootstraps even when called with a running loop (here,
    this async test's), where ``asyncio.run`` cannot nest: never a silently un-bootstrapped deployment."""
    from tests.conftest import bootstrap_sync

    settings = make_settings()
    bootstrap_sync(settings)
    async with AwsClients(settings) as clients:
        topo = settings.topology
        ddb, sqs = await clients.dynamodb(), await clients.sqs()
        for spec in topo.tables.values():
            assert (await ddb.describe_table(TableName=spec.name))["Table"]["TableStatus"] == "ACTIVE"
        for q in topo.queues.values():
            assert (await sqs.get_queue_url(QueueName=q.name))["QueueUrl"].endswith(q.name)
