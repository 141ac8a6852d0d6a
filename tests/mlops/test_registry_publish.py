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


class _Killed(Exception):
    """The registry process dying at this point (nothing after it runs)."""


class _DeadAfterKill:
    """``AwsClients`` for a process that gets killed: once ``dead``, every DynamoDB call fails, so nothing the
    registry would write after the kill (such as undoing its claim) reaches the table."""

    def __init__(self, real: AwsClients) -> None:
        self.real, self.dead = real, False
        self.settings = real.settings

    async def dynamodb(self) -> object:
        client = await self.real.dynamodb()
        if not self.dead:
            return client
        raise _Killed("the process is gone")

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


class _KillOnRegistered:
    def __init__(self, real: EventPublisher, clients: _DeadAfterKill) -> None:
        self.real, self.clients = real, clients

    async def publish(self, event: object) -> object:
        if getattr(event, "name", None) == ev.MODEL_REGISTERED:
            self.clients.dead = True
            raise _Killed("killed before ModelRegistered went out")
        return await self.real.publish(event)  # type: ignore[arg-type]


async def test_a_registration_killed_before_model_registered_went_out_is_announced_by_a_later_delivery(
        clients: AwsClients, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: the flag said "published" from the moment it was claimed, so a registry killed between the
    claim and the publish left a version that no redelivery would ever announce."""
    from services.registry import service as registry_mod

    await bootstrap_topology(clients)
    qname = await capture_queue(clients, [ev.MODEL_REGISTERED], name="registered")
    dying = _DeadAfterKill(clients)
    first = Registry(dying, _KillOnRegistered(EventPublisher(clients, "registry"), dying),  # type: ignore[arg-type]
                     ApprovalPolicy.load(), resamples=100)
    done = produce_run(clients.settings, auc=0.70, sensitivity=0.5)  # below the bar: not approved
    with pytest.raises(_Killed):
        await first.on_training_completed(done)
    restarted = Registry(clients, EventPublisher(clients, "registry"), ApprovalPolicy.load(), resamples=100)
    version = (await restarted.list())[-1]["version"]
    assert (await restarted.get(version))["registered_published"] is False
    # A duplicate delivered while the first could still be publishing does not publish it a second time...
    assert await restarted.on_training_completed(done) == version
    assert await captured(clients, qname, wait_s=1.0) == []
    # ...and the killed delivery, back after its visibility timeout (the claim's lease has passed), announces it.
    monkeypatch.setattr(registry_mod, "PUBLISH_LEASE_S", -1.0, raising=False)
    assert await restarted.on_training_completed(done) == version
    events = [e["detail"] for e in await captured(clients, qname, wait_s=3.0)]
    decision = (await restarted.get(version))["decision"]
    assert [(e["version"], e["run_id"], e["decision"]) for e in events] == [(version, done.run_id, decision)]
    assert (await restarted.get(version))["registered_published"] is True
    assert await restarted.on_training_completed(done) == version  # once out, never again
    assert await captured(clients, qname, wait_s=1.0) == []


async def test_the_publishing_lease_ends_before_a_killed_delivery_comes_back() -> None:
    """The delivery that was killed is the one that comes back for sure (after the queue's visibility timeout); by
    then its claim must have lapsed, or it would find its own claim and announce nothing."""
    from services.registry import service as registry_mod
    from shared.settings import Settings

    queue = Settings().topology.queue_for("registry")
    assert queue.visibility_timeout_s > registry_mod.PUBLISH_LEASE_S
