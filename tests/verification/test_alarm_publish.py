"""A performance breach recorded but whose ModelPerformanceDegraded never went out (the process killed between the
two, or the bus failing) is handed out again for publishing, with the same episode, so the event id is the same; once
published, never again in the episode (found by a review: the AUC alarm was recorded and lost for good)."""

from __future__ import annotations

import pytest

from services.verification.adapters import alarms as alarms_mod
from services.verification.adapters.alarms import DegradationAlarms
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_an_unpublished_breach_is_handed_out_again_after_its_lease(clients: AwsClients,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    await bootstrap_topology(clients)
    alarms = DegradationAlarms(clients)
    episode = await alarms.raise_once(3, "auc", 0.61)
    assert episode is not None
    assert await alarms.raise_once(3, "auc", 0.60) is None  # another check, within the publisher's lease
    monkeypatch.setattr(alarms_mod, "PUBLISH_LEASE_S", -1.0)  # the lease has passed: the publisher died
    assert await alarms.raise_once(3, "auc", 0.59) == episode  # the same episode: the same event id
    await alarms.published(3, "auc")
    assert await alarms.raise_once(3, "auc", 0.58) is None  # published: raised for good in this episode
    await alarms.clear(3, "auc")  # recovered
    assert await alarms.raise_once(3, "auc", 0.57) not in (None, episode)  # a new episode
