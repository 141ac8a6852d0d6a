"""A re-score is a new InstanceScored even when it repeats an earlier (version, probability): a rollback to an earlier
champion re-scores the unread images with exactly the scores they had, and before the fix those events carried the
ids of the first scores, so verification skipped them as duplicates (idempotency records live an hour) and kept the
rolled-back model's priorities. A pass also reads only the newest ``triage_rescore_max`` unread images.

Real parts: the moto server, a trained ResNet-18, instances stored as HTJ2K, the bus with a capture queue."""

from __future__ import annotations

import pytest

from services.triage.service import Triage
from services.triage.settings import TriageSettings
from shared import event_names as ev
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.events import ModelApproved
from shared.publisher import EventPublisher
from tests.support.triage_data import make_case, trained_model_tar
from tests.support.triage_verification_procs import capture_queue, captured, install_champion, store_instance

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _approve(triage: Triage, clients: AwsClients, model: bytes, version: int) -> None:
    uri = await install_champion(clients, model, version, 0.5)
    await triage.on_model_approved(ModelApproved(version=version, model_package_arn=f"arn:test/{version}",
                                                 model_artifact_uri=uri, threshold=0.5, approved_by="test",
                                                 reason="test"))
    assert triage._rescore_task is not None
    await triage._rescore_task


async def test_a_rollback_rescore_is_a_new_event_and_a_pass_reads_only_the_newest(clients: AwsClients) -> None:
    await bootstrap_topology(clients)
    qname = await capture_queue(clients, [ev.INSTANCE_SCORED], name="scored")
    model, _ = trained_model_tar()
    await install_champion(clients, model, 1, 0.5)
    settings = TriageSettings(**{**clients.settings.model_dump(), "triage_rescore_per_s": 100.0,
                                 "triage_rescore_max": 3, "triage_heatmaps": "none"})
    triage = Triage(clients, settings, EventPublisher(clients, "triage"))
    await triage.holder.ensure_loaded()
    triage.batcher.start()
    sops = []
    try:
        for i in range(5):  # arrival order: sops[4] is the newest
            case = make_case(i, 7, size=128, uid_salt="rollback")
            stored = await store_instance(clients, case.pixels, case.meta, case.study_uid, case.series_uid,
                                          case.sop_uid)
            assert (await triage.on_instance_stored(stored))["model_version"] == 1
            sops.append(case.sop_uid)
        await _approve(triage, clients, model, 2)  # the same weights as v2: the same probabilities
        await _approve(triage, clients, model, 1)  # rolled back
        events = [e["detail"] for e in await captured(clients, qname, wait_s=3.0)]
    finally:
        await triage.cancel_backlog()
        await triage.batcher.stop()

    newest = set(sops[2:])
    by_sop: dict[str, list[dict]] = {}
    for d in events:
        by_sop.setdefault(d["sop_uid"], []).append(d)
    # only the 3 newest were re-scored (twice each); the 2 oldest keep their first score
    assert {s: [d["model_version"] for d in by_sop[s]] for s in sops} == {
        **{s: [1] for s in sops[:2]}, **{s: [1, 2, 1] for s in sops[2:]}}
    for s in newest:
        first, _, rolled_back = by_sop[s]
        assert rolled_back["probability"] == first["probability"]  # the same score again ...
        assert rolled_back["event_id"] != first["event_id"], "... must not be taken for a duplicate of the first"
    assert len({d["event_id"] for d in events}) == len(events)


async def test_a_rescore_that_finishes_after_the_read_is_not_published(clients: AwsClients) -> None:
    """The claim was taken while the image was unread; the radiologist's read (ImageVerified) lands before the new
    score is written. The score the reader saw stays the published one: a later one would move the read's live
    performance to a model that scored it after the label."""
    await bootstrap_topology(clients)
    qname = await capture_queue(clients, [ev.INSTANCE_SCORED], name="late")
    model, _ = trained_model_tar()
    await install_champion(clients, model, 1, 0.5)
    settings = TriageSettings(**{**clients.settings.model_dump(), "triage_rescore_max": 0, "triage_heatmaps": "none"})
    triage = Triage(clients, settings, EventPublisher(clients, "triage"))
    loaded = await triage.holder.ensure_loaded()
    assert loaded is not None
    triage.batcher.start()
    try:
        case = make_case(0, 7, size=128, uid_salt="late-read")
        stored = await store_instance(clients, case.pixels, case.meta, case.study_uid, case.series_uid, case.sop_uid)
        await triage.on_instance_stored(stored)
        assert await triage.scores.claim_rescore(case.sop_uid, triage.claim_owner, 60.0, 2)
        await triage.scores.mark_read(case.sop_uid)  # the read arrives while the re-score runs
        base = {"study_uid": case.study_uid, "series_uid": case.series_uid, "sop_uid": case.sop_uid,
                "patient_pseudo_id": stored.patient_pseudo_id}
        out = await triage._score(loaded, base, "2026-01-01T00:00:00.000+00:00", replaces="first-score")
        events = [e["detail"] for e in await captured(clients, qname, wait_s=3.0)]
    finally:
        await triage.cancel_backlog()
        await triage.batcher.stop()
    assert [d["sop_uid"] for d in events] == [case.sop_uid], "only the score given before the read"
    assert out.get("published") is False
