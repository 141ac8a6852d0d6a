"""A triage task that did not receive ``ModelApproved`` scores with the new champion all the same.

Triage runs as several tasks that share one queue, so each event reaches one of them. Before the fix, only the task
that took ``ModelApproved`` swapped models: the others went on scoring new images with the old champion until they
restarted, and their unread images were never re-scored. Now every task reads the registry's pointer at most every
``triage_champion_check_s`` and installs a newer champion (then runs its backlog and re-scoring passes).
"""

from __future__ import annotations

import pytest

from services.triage.service import Triage
from services.triage.settings import TriageSettings
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.publisher import EventPublisher
from tests.support.triage_data import make_case, trained_model_tar
from tests.support.triage_verification_procs import install_champion, store_instance

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_task_that_missed_the_approval_scores_with_the_new_champion(clients: AwsClients) -> None:
    await bootstrap_topology(clients)
    model, _ = trained_model_tar()
    await install_champion(clients, model, 1, 0.5)
    settings = TriageSettings(**{**clients.settings.model_dump(), "triage_champion_check_s": 0.0,
                                 "triage_rescore_max": 0})
    triage = Triage(clients, settings, EventPublisher(clients, "triage"))
    assert (await triage.holder.ensure_loaded()).version == 1  # type: ignore[union-attr]
    triage.batcher.start()
    try:
        # another task handled ModelApproved: only the registry's pointer says so
        await install_champion(clients, model, 2, 0.4)
        case = make_case(0, 7, size=128, uid_salt="missed-approval")
        stored = await store_instance(clients, case.pixels, case.meta, case.study_uid, case.series_uid,
                                      case.sop_uid)
        out = await triage.on_instance_stored(stored)
        assert out["status"] == "scored"
        assert out["model_version"] == 2, "the task scored with the champion it had, not the approved one"
        assert triage.holder.current is not None and triage.holder.current.threshold == 0.4
    finally:
        await triage.cancel_backlog()
        await triage.batcher.stop()
