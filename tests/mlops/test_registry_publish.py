"""A registry that approved a model and died (or failed to publish) before ModelApproved went out: the redelivered
TrainingCompleted publishes it, under the same event id (found by a review: the model was champion, and triage only
heard of it when an image arrived).

Real parts: the moto server (model package group, tables, bus with a capture queue); the publisher fails on purpose
for ModelApproved the first time (as EventBridge answering 500, or a kill between the two)."""

from __future__ import annotations

import pytest

from services.registry.service import Registry
from shared import event_names as ev
from shared.approval import ApprovalPolicy
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.publisher import EventPublisher
from tests.mlops.test_registry import produce_run
from tests.support.aws import FailingPublisher
from tests.support.triage_verification_procs import capture_queue, captured

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_lost_model_approved_is_published_by_the_redelivery(clients: AwsClients) -> None:
    await bootstrap_topology(clients)
    qname = await capture_queue(clients, [ev.MODEL_APPROVED], name="approved")
    outage = FailingPublisher(EventPublisher(clients, "registry"), ev.MODEL_APPROVED)
    registry = Registry(clients, outage, ApprovalPolicy.load(), resamples=100)  # type: ignore[arg-type]
    done = produce_run(clients.settings, auc=0.93, sensitivity=0.9)
    with pytest.raises(RuntimeError):
        await registry.on_training_completed(done)  # approved and champion; its event lost
    version = (await registry.champion()).version  # type: ignore[union-attr]
    assert (await registry.get(version))["approved_published"] is False
    assert await captured(clients, qname, wait_s=1.0) == []
    outage.down = False
    assert await registry.on_training_completed(done) == version  # the redelivery
    events = [e["detail"] for e in await captured(clients, qname, wait_s=3.0)]
    assert [(e["version"], e["approved_by"], e["rollback"]) for e in events] == [(version, "policy", False)]
    assert (await registry.get(version))["approved_published"] is True
    assert await registry.on_training_completed(done) == version  # once out, never again
    assert await captured(clients, qname, wait_s=1.0) == []
