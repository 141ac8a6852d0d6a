"""The triage service as a process: InstanceStored -> score (real trained model) -> worklist; hot swap; unscored.

The tests of this module run in order against one deployment: first with no champion (unscored), then with champion
v1 (scoring, heatmaps, not applicable), then a swap to v2 in the middle of a stream.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import imagecodecs
import pytest

from services.triage.domain.priority import VERIFIED_BEFORE_MODEL
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.events import ImageVerified, InstanceStored, ModelApproved
from shared.model_format import CONFIG_FILE
from shared.publisher import EventPublisher
from shared.settings import Settings
from tests.support.aws import wait_for
from tests.support.triage_data import make_case, trained_model_tar
from tests.support.triage_verification_procs import (
    ServiceProcess,
    capture_queue,
    captured,
    install_champion,
    running,
    store_instance,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Env:
    settings: Settings
    triage: ServiceProcess
    verification: ServiceProcess
    capture: str
    model: bytes

    def headers(self, role: str = "radiologist") -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings, role)}"}


async def _prepare(settings: Settings) -> str:
    async with AwsClients(settings) as c:
        await bootstrap_topology(c)
        return await capture_queue(c, ["InstanceScored"])


@pytest.fixture(scope="module")
def env(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    model, metrics = trained_model_tar()
    assert metrics["auc"] >= 0.9, metrics
    tmp: Path = tmp_path_factory.mktemp("triage")
    s = Settings(aws_endpoint_url=aws_endpoint, prefix=f"tr-{uuid.uuid4().hex[:10]}", var_dir=tmp / "var",
                 aws_max_attempts=2)
    capture = asyncio.run(_prepare(s))
    with running("verification", s, tmp / "logs") as ver, \
            running("triage", s, tmp / "logs", RADLOOP_TRIAGE_BATCH_WINDOW_MS="20",
                    RADLOOP_TRIAGE_RESCORE_PER_S="10") as tri:
        yield Env(s, tri, ver, capture, model)


async def _store(env: Env, cases: list[Any], **kw: Any) -> list[InstanceStored]:
    async with AwsClients(env.settings) as c:
        return [await store_instance(c, x.pixels, x.meta, x.study_uid, x.series_uid, x.sop_uid, **kw) for x in cases]


async def _publish(env: Env, *events: Any) -> None:
    async with AwsClients(env.settings) as c:
        await EventPublisher(c, "test").publish_many(list(events))


async def _scores(env: Env, sops: list[str]) -> dict[str, dict[str, Any]]:
    async with AwsClients(env.settings) as c:
        ddb = await c.dynamodb()
        out = {}
        for sop in sops:
            item = (await ddb.get_item(TableName=env.settings.topology.table("scores"),
                                       Key={"sop_uid": {"S": sop}}, ConsistentRead=True)).get("Item")
            if item:
                out[sop] = {k: next(iter(v.values())) for k, v in item.items()}
        return out


async def _worklist(env: Env) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=env.verification.url, timeout=10) as client:
        r = await client.get("/verification/worklist", headers=env.headers("viewer"), params={"limit": 200})
        assert r.status_code == 200, r.text
        return r.json()["items"]  # type: ignore[no-any-return]


async def _wait_listed(env: Env, sops: list[str], timeout_s: float = 60) -> list[dict[str, Any]]:
    async def ready() -> list[dict[str, Any]] | None:
        items = {i["case_id"]: i for i in await _worklist(env)}
        if all(s in items and items[s]["ai"]["status"] != "pending" for s in sops):
            return [i for i in items.values() if i["case_id"] in sops]
        return None

    got = await wait_for(ready, timeout_s, 0.5)
    assert got, f"not all of {len(sops)} instances were scored and listed in time:\n{env.triage.tail()}"
    wl = await _worklist(env)
    return [i for i in wl if i["case_id"] in sops]


async def test_without_a_champion_images_are_unscored_and_listed_by_arrival(env: Env) -> None:
    cases = [make_case(i, 21, size=128, uid_salt="unscored") for i in range(3)]
    events = await _store(env, cases)
    for e in events:  # one at a time, so arrival order is known
        await _publish(env, e)
        await asyncio.sleep(0.05)
    items = await _wait_listed(env, [c.sop_uid for c in cases])
    assert [i["case_id"] for i in items] == [c.sop_uid for c in cases]
    assert all(i["ai"]["status"] == "unscored" and "no approved model" in i["ai"]["reason"] for i in items)
    # a radiologist reads the last one before any model exists: it leaves triage's backlog (twice: redelivery-safe)
    read = events[-1]
    verified = ImageVerified(study_uid=read.study_uid, series_uid=read.series_uid, sop_uid=read.sop_uid,
                             case_id=read.sop_uid, label="normal", label_version=1, resolution="single",
                             reader="dr-test", patient_pseudo_id=read.patient_pseudo_id,
                             frame_key=f"{read.frames_prefix}1.jph")
    await _publish(env, verified, verified)

    async def left() -> bool:
        row = (await _scores(env, [read.sop_uid]))[read.sop_uid]
        return "awaiting_model" not in row and row["reason"] == VERIFIED_BEFORE_MODEL

    assert await wait_for(left, 30, 0.3), env.triage.tail()


def model_threshold(data: bytes) -> float:
    """The operating threshold stored in a model.tar.gz's config.json."""
    import io
    import json
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next(m for m in tar.getmembers() if m.name.rsplit("/", 1)[-1] == CONFIG_FILE)
        return float(json.load(tar.extractfile(member))["threshold"])  # type: ignore[arg-type]


async def test_scoring_orders_the_worklist_and_marks_unsuitable_images(env: Env) -> None:
    async with AwsClients(env.settings) as c:
        threshold = model_threshold(env.model)  # the operating threshold training chose on validation
        uri = await install_champion(c, env.model, 1, threshold)
    await _publish(env, ModelApproved(version=1, model_package_arn="arn:test/1", model_artifact_uri=uri,
                                      threshold=threshold, approved_by="test", reason="first champion"))

    async def loaded() -> bool:
        async with httpx.AsyncClient(base_url=env.triage.url, timeout=10) as client:
            return (await client.get("/triage/model", headers=env.headers("ml"))).json()["model_version"] == 1

    assert await wait_for(loaded, 60, 0.3), env.triage.tail()

    pos = [make_case(i, 99, size=128, positive=True, uid_salt="score") for i in (1, 2, 3)]
    neg = [make_case(i, 99, size=128, positive=False, uid_salt="score") for i in (4, 5, 6)]
    ct = make_case(7, 99, size=128, uid_salt="score-ct")
    events = await _store(env, pos + neg) + await _store(env, [ct], modality="CT")
    await _publish(env, *events)
    items = await _wait_listed(env, [e.sop_uid for e in events])

    by_id = {i["case_id"]: i for i in items}
    assert by_id[ct.sop_uid]["ai"]["status"] == "not_applicable" and "CT" in by_id[ct.sop_uid]["ai"]["reason"]
    scored = [i for i in items if i["ai"]["status"] == "scored"]
    assert len(scored) == 6 and all(i["ai"]["model_version"] == 1 for i in scored)
    # the worklist order is the order of the scores: urgent first, then by falling probability; unscored last
    expect = sorted(scored, key=lambda i: (i["ai"]["priority"] != "urgent", -i["ai"]["probability"]))
    assert [i["case_id"] for i in items] == [i["case_id"] for i in expect] + [ct.sop_uid]
    # and the trained model ranks every synthetic consolidation above every normal image
    assert min(by_id[c.sop_uid]["ai"]["probability"] for c in pos) > max(
        by_id[c.sop_uid]["ai"]["probability"] for c in neg)
    # priority follows the champion's operating threshold
    assert all((i["ai"]["priority"] == "urgent") == (i["ai"]["probability"] >= i["ai"]["threshold"]) for i in scored)

    urgent = [c for c in pos if by_id[c.sop_uid]["ai"]["priority"] == "urgent"]
    assert urgent, "no synthetic consolidation reached the model's operating threshold"
    table = await _scores(env, [c.sop_uid for c in urgent])
    async with httpx.AsyncClient(base_url=env.verification.url, timeout=10) as client:
        for c in urgent:
            row = table[c.sop_uid]
            assert row["status"] == "scored" and row["priority"] == "urgent" and row["model_version"] == "1"
            view = (await client.get(f"/verification/cases/{c.sop_uid}", headers=env.headers())).json()
            assert view["ai"]["heatmap_key"] == row["heatmap_key"]
            png = await client.get(view["ai"]["heatmap_url"])  # presigned: no token needed
            assert png.status_code == 200
            assert imagecodecs.png_decode(png.content).shape == (*c.pixels.shape, 4)
    assert all("heatmap_key" not in r for r in (await _scores(env, [c.sop_uid for c in neg])).values()
               if r["priority"] == "routine")


async def test_the_first_champion_scores_the_backlog_that_arrived_before_it(env: Env) -> None:
    """The images of the first test arrived with no model; champion v1 (approved in the previous test) scores them
    without any new InstanceStored, and the worklist re-orders them by that score."""
    *sops, read = [make_case(i, 21, size=128, uid_salt="unscored").sop_uid for i in range(3)]

    async def rescored() -> list[dict[str, Any]] | None:
        items = [i for i in await _worklist(env) if i["case_id"] in sops]
        return items if len(items) == 2 and all(i["ai"]["status"] == "scored" for i in items) else None

    items = await wait_for(rescored, 60, 0.5)
    assert items, f"the backlog was not scored:\n{env.triage.tail()}"
    assert all(i["ai"]["model_version"] == 1 and i["ai"]["probability"] is not None for i in items)
    rows = await _scores(env, sops)
    assert all(r["status"] == "scored" and "awaiting_model" not in r for r in rows.values())
    # the image read before the champion was not scored by it: it had left the backlog
    row = (await _scores(env, [read]))[read]
    assert row["status"] == "unscored" and row["reason"] == VERIFIED_BEFORE_MODEL and "model_version" not in row


async def test_a_take_over_republishes_the_recorded_score_instead_of_scoring_again(env: Env) -> None:
    """A task killed after recording (and publishing) a score: the task that takes the message over publishes that
    recorded decision under its id, and does not score again. Scoring again gave another probability when the new
    task ran the model in another precision (bf16 after fp32), so another event id: two InstanceScored for one image
    in the 2,000-image chaos run (docs/reliability.md). Here the killed task's decision is written as it writes it."""
    from services.triage.adapters.scores import Scores
    from services.triage.service import scored_event_id
    from shared.events import InstanceScored

    (case,) = [make_case(2, 77, size=128, uid_salt="take-over")]
    (stored,) = await _store(env, [case])
    decision = InstanceScored(study_uid=case.study_uid, series_uid=case.series_uid, sop_uid=case.sop_uid,
                              status="scored", probability=0.123456, threshold=0.5, priority="routine",
                              model_version=1, patient_pseudo_id=stored.patient_pseudo_id)
    decision = decision.model_copy(update={"event_id": scored_event_id(decision)})
    async with AwsClients(env.settings) as c:
        await Scores(c).put(decision, awaiting_model=False)
        await EventPublisher(c, "triage").publish(decision)  # published, then killed before acknowledging
    await _publish(env, stored)  # the InstanceStored message, taken over by the running task

    async def republished() -> list[dict[str, Any]] | None:
        async with AwsClients(env.settings) as c:
            evs = [e["detail"] for e in await captured(c, env.capture, wait_s=1)]
        mine = [e for e in evs if e["sop_uid"] == case.sop_uid]
        got.extend(mine)
        return got if len(got) >= 2 else None

    got: list[dict[str, Any]] = []
    assert await wait_for(republished, 60, 0.5), env.triage.tail()
    assert {e["event_id"] for e in got} == {decision.event_id}, f"a second InstanceScored effect: {got}"
    assert {e["probability"] for e in got} == {0.123456}
    assert (await _scores(env, [case.sop_uid]))[case.sop_uid]["probability"] == "0.123456"  # not re-scored


async def test_hot_swap_mid_stream_loses_nothing_and_scores_nothing_twice(env: Env) -> None:
    async with AwsClients(env.settings) as c:
        await captured(c, env.capture, wait_s=0.5)  # forget the earlier tests' events
    cases = []
    for n in range(16):
        x = make_case(0, 99, size=128, uid_salt=f"swap-{n}") if n % 2 == 0 else \
            make_case(1, 99, size=128, positive=True, uid_salt=f"swap-{n}")
        cases.append(x)
    events = await _store(env, cases)
    first, later = events[:8], events[8:]
    await _publish(env, *first)

    async with AwsClients(env.settings) as c:
        uri = await install_champion(c, env.model, 2, 0.45)
    await _publish(env, ModelApproved(version=2, model_package_arn="arn:test/2", model_artifact_uri=uri,
                                      threshold=0.45, approved_by="test", reason="better", previous_version=1))

    async def swapped() -> bool:
        async with httpx.AsyncClient(base_url=env.triage.url, timeout=10) as client:
            return (await client.get("/triage/model", headers=env.headers("ml"))).json()["model_version"] == 2

    assert await wait_for(swapped, 60, 0.2), env.triage.tail()
    await _publish(env, *later)
    await _publish(env, later[0], first[0])  # duplicate deliveries (same event ids)

    sops = [e.sop_uid for e in events]

    async def all_v2() -> list[dict[str, Any]] | None:
        items = [i for i in await _worklist(env) if i["case_id"] in sops]
        return items if len(items) == 16 and all(i["ai"]["model_version"] == 2 for i in items) else None

    # every one ends with the new champion's score: scored by it, or scored by v1 and then re-scored as unread
    assert await wait_for(all_v2, 60, 0.5), env.triage.tail()
    await asyncio.sleep(2)  # let any (wrong) second scoring of the duplicates happen before counting
    async with AwsClients(env.settings) as c:
        evs = [e["detail"] for e in await captured(c, env.capture, wait_s=2)]
    per_version = Counter((e["sop_uid"], e["model_version"]) for e in evs if e["sop_uid"] in sops)
    assert set(per_version.values()) == {1}, f"an instance was scored twice by one model: {per_version}"
    per_sop = Counter(e["sop_uid"] for e in evs if e["sop_uid"] in sops)
    assert all(per_sop[e.sop_uid] == 1 for e in later), "instances after the swap are scored once, by v2"
    assert all((e.sop_uid, 2) in per_version for e in events)
    assert {e["threshold"] for e in evs if e["model_version"] == 2} == {0.45}
    async with httpx.AsyncClient(base_url=env.triage.url, timeout=10) as client:
        status = (await client.get("/triage/model", headers=env.headers("ml"))).json()
    assert status["batches"]["largest"] >= 2, f"micro-batching never batched: {json.dumps(status['batches'])}"


async def test_a_new_champion_rescores_each_unread_image_once_newest_first(env: Env) -> None:
    """Champion v3 (a threshold almost no image reaches) re-scores every unread scored image exactly once, newest
    arrival first, and the worklist re-orders: urgent cases become routine. An image read meanwhile is not re-scored,
    and a duplicate or repeated ``ModelApproved`` re-scores nothing twice."""
    async def unread_by_v2() -> list[dict[str, Any]] | None:  # the previous test's re-scoring may still be running
        async with AwsClients(env.settings) as c:
            ddb = await c.dynamodb()
            items = (await ddb.scan(TableName=env.settings.topology.table("scores"), ConsistentRead=True))["Items"]
        rows = [{k: next(iter(v.values())) for k, v in i.items()} for i in items]
        unread = sorted((r for r in rows if r.get("unread_pk")), key=lambda r: r["arrived_at"])
        return unread if len(unread) >= 16 and {r["model_version"] for r in unread} == {"2"} else None

    unread = await wait_for(unread_by_v2, 60, 0.5)
    assert unread, env.triage.tail()
    assert any(r["priority"] == "urgent" for r in unread)
    # a radiologist reads one of them first: it is no longer triage's to re-order
    read = unread[len(unread) // 2]
    await _publish(env, ImageVerified(study_uid=read["study_uid"], series_uid=read["series_uid"],
                                      sop_uid=read["sop_uid"], case_id=read["sop_uid"], label="normal",
                                      label_version=1, resolution="single", reader="dr-test",
                                      patient_pseudo_id=read["patient_pseudo_id"], frame_key="x/1.jph"))

    async def was_read() -> bool:
        row = (await _scores(env, [read["sop_uid"]]))[read["sop_uid"]]
        return row.get("verified") is True and "unread_pk" not in row

    assert await wait_for(was_read, 30, 0.3), env.triage.tail()
    async with AwsClients(env.settings) as c:
        await captured(c, env.capture, wait_s=0.5)  # forget the earlier tests' events
        uri = await install_champion(c, env.model, 3, 0.9999)
    approved = ModelApproved(version=3, model_package_arn="arn:test/3", model_artifact_uri=uri, threshold=0.9999,
                             approved_by="test", reason="better", previous_version=2)
    again = approved.model_copy(update={"event_id": uuid.uuid4().hex})  # the same approval as a new event
    await _publish(env, approved, approved, again)
    sops = [r["sop_uid"] for r in unread if r["sop_uid"] != read["sop_uid"]]

    async def all_v3() -> list[dict[str, Any]] | None:
        items = [i for i in await _worklist(env) if i["case_id"] in sops]
        return items if len(items) == len(sops) and all(i["ai"]["model_version"] == 3 for i in items) else None

    items = await wait_for(all_v3, 90, 0.5)
    assert items, f"unread images were not re-scored by v3:\n{env.triage.tail()}"
    before = {r["sop_uid"]: r["priority"] for r in unread}
    assert all(i["ai"]["priority"] == ("urgent" if i["ai"]["probability"] >= 0.9999 else "routine") for i in items)
    assert any(before[i["case_id"]] == "urgent" and i["ai"]["priority"] == "routine" for i in items), \
        "no case left urgent under the new champion's threshold: the worklist did not take the new priorities"
    await asyncio.sleep(3)  # let any (wrong) second re-scoring happen before counting
    async with AwsClients(env.settings) as c:
        evs = [e["detail"] for e in await captured(c, env.capture, wait_s=2)]
    v3 = [e for e in evs if e["model_version"] == 3]
    assert Counter(e["sop_uid"] for e in v3) == dict.fromkeys(sops, 1), "each unread image re-scored exactly once"
    assert read["sop_uid"] not in {e["sop_uid"] for e in evs}, "the image read meanwhile was re-scored"
    order = [e["sop_uid"] for e in sorted(v3, key=lambda e: e["occurred_at"])]
    assert order.index(sops[-1]) < order.index(sops[0]), "the newest arrival was not re-scored before the oldest"
    row = (await _scores(env, [read["sop_uid"]]))[read["sop_uid"]]
    assert row["model_version"] == "2" and "unread_pk" not in row
