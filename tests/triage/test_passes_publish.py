"""A backlog or re-scoring pass that writes a score and then cannot publish its InstanceScored (EventBridge failing,
the task killed or stopped between the two) loses nothing: the record stays where the next pass finds it, and that
pass publishes the event (found by a review: the score records said "scored" or "v2" while the worklist kept
"unscored" or the v1 score, for good).

Real parts: the moto server, a trained ResNet-18, instances stored as HTJ2K, the bus with a capture queue; the
publisher fails on purpose for the first pass (as EventBridge answering 500)."""

from __future__ import annotations

import pytest

from services.triage.service import BACKLOG_RETRY_S, Triage
from services.triage.settings import TriageSettings
from shared import event_names as ev
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.publisher import EventPublisher
from tests.support.aws import FailingPublisher
from tests.support.triage_data import make_case, trained_model_tar
from tests.support.triage_verification_procs import capture_queue, captured, install_champion, store_instance

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_pass_whose_publish_fails_publishes_on_the_next_pass(clients: AwsClients) -> None:
    await bootstrap_topology(clients)
    qname = await capture_queue(clients, [ev.INSTANCE_SCORED], name="pending")
    model, _ = trained_model_tar()
    settings = TriageSettings(**{**clients.settings.model_dump(), "triage_rescore_per_s": 100.0,
                                 "triage_heatmaps": "none"})
    real = EventPublisher(clients, "triage")
    triage = Triage(clients, settings, real)
    triage.batcher.start()
    try:
        sops = []
        for i in range(3):  # before any model: the backlog
            case = make_case(i, 9, size=128, uid_salt="pending")
            stored = await store_instance(clients, case.pixels, case.meta, case.study_uid, case.series_uid,
                                          case.sop_uid)
            assert (await triage.on_instance_stored(stored))["status"] == "unscored"
            sops.append(case.sop_uid)
        await captured(clients, qname, wait_s=2.0)  # the three "awaiting model" events
        await install_champion(clients, model, 1, 0.5)
        await triage.holder.ensure_loaded()
        outage = FailingPublisher(real, ev.INSTANCE_SCORED)
        triage.publisher = outage  # type: ignore[assignment]
        assert await triage.rescore_backlog() == 0
        for sop in sops:  # scored, but still in the backlog with its event pending
            rec = await triage.scores.recorded(sop)
            assert rec is not None and rec["status"] == "scored" and rec.get("publish_pending") and rec.get("backlog_pk")
        assert "backlog" in triage._retries  # a later pass is scheduled (after BACKLOG_RETRY_S)
        assert await captured(clients, qname, wait_s=1.0) == []
        outage.down = False
        assert await triage.rescore_backlog() == 3
        first = {e["detail"]["sop_uid"]: e["detail"] for e in await captured(clients, qname, wait_s=3.0)}
        assert set(first) == set(sops) and all(d["model_version"] == 1 for d in first.values())
        for sop in sops:
            rec = await triage.scores.recorded(sop)
            assert rec is not None and not rec.get("publish_pending") and not rec.get("backlog_pk")

        # The same for a re-scoring pass: v2's scores written, their events lost, then published by the next pass.
        await install_champion(clients, model, 2, 0.5)
        await triage.holder.ensure_loaded()
        assert triage.holder.current is not None and triage.holder.current.version == 2
        outage.down = True
        triage._rescore_again = True
        assert await triage.rescore_unread() == 0
        for sop in sops:
            rec = await triage.scores.recorded(sop)
            assert rec is not None and rec["model_version"] == 2 and rec.get("publish_pending")
        assert await captured(clients, qname, wait_s=1.0) == []
        outage.down = False
        triage._rescore_again = True
        assert await triage.rescore_unread() == 3
        again = [e["detail"] for e in await captured(clients, qname, wait_s=3.0)]
        assert sorted(d["sop_uid"] for d in again) == sorted(sops) and all(d["model_version"] == 2 for d in again)
        assert BACKLOG_RETRY_S > 0
    finally:
        await triage.cancel_backlog()
        await triage.batcher.stop()
