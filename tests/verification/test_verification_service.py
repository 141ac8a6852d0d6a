"""The verification service as a process over HTTP, fed by real events through the moto bus and queues."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from shared import storage
from shared.aws import AwsClients
from shared.events import InstanceScored, InstanceStored, pseudonymise
from shared.publisher import EventPublisher
from tests.support.aws import wait_for
from tests.support.triage_verification_procs import captured

pytestmark = pytest.mark.asyncio(loop_scope="session")

STUDY = "1.2.826.0.1.3680043.10.1"


def uid(tag: str) -> str:
    return f"2.25.{int(hashlib.sha256(f'{tag}/{time.time_ns()}'.encode()).hexdigest()[:20], 16)}"


def stored_event(settings: Any, sop: str, modality: str = "DX") -> InstanceStored:
    series = STUDY + ".7"
    return InstanceStored(
        study_uid=STUDY, series_uid=series, sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        modality=modality, body_part="CHEST", number_of_frames=1, rows=64, columns=64,
        original_key=storage.original_key(STUDY, series, sop), frames_prefix=storage.frames_prefix(STUDY, series, sop),
        metadata_key=storage.metadata_key(STUDY, series, sop), content_sha256="a" * 64, size_bytes=1,
        htj2k_bytes=1, patient_pseudo_id=pseudonymise(sop, settings.pseudonym_key), source="stow")


def scored_event(sop: str, p: float | None, *, version: int = 1, threshold: float = 0.5,
                 status: str = "scored") -> InstanceScored:
    return InstanceScored(study_uid=STUDY, series_uid=STUDY + ".7", sop_uid=sop, status=status,  # type: ignore[arg-type]
                          probability=p, threshold=threshold if p is not None else None,
                          priority="urgent" if p is not None and p >= threshold else "routine",
                          model_version=version if p is not None else None,
                          heatmap_key=None, reason=None if p is not None else "no approved model yet")


async def publish(settings: Any, *events: Any) -> None:
    async with AwsClients(settings) as c:
        await EventPublisher(c, "test").publish_many(list(events))


async def case_ready(client: httpx.AsyncClient, dep: Any, sop: str, scored: bool = True) -> dict[str, Any] | None:
    r = await client.get(f"/verification/cases/{sop}", headers=dep.headers("viewer"))
    if r.status_code != 200:
        return None
    body = r.json()
    return body if (not scored or body["ai"]["status"] != "pending") else None


async def events_of(dep: Any, wait_s: float = 1.0) -> list[dict[str, Any]]:
    async with AwsClients(dep.settings) as c:
        return await captured(c, dep.capture, wait_s=wait_s)


async def new_cases(client: httpx.AsyncClient, dep: Any, probs: list[float | None], version: int = 1) -> list[str]:
    """Stored + scored cases, published together and awaited together (the event flow is the slow part)."""
    sops = [uid(f"case{i}") for i in range(len(probs))]
    await publish(dep.settings, *(stored_event(dep.settings, s) for s in sops),
                  *(scored_event(s, p, version=version) for s, p in zip(sops, probs, strict=True)))
    for sop in sops:
        assert await wait_for(lambda sop=sop: case_ready(client, dep, sop), 30), f"case {sop} never appeared"
    return sops


async def new_case(client: httpx.AsyncClient, dep: Any, p: float | None = 0.7, version: int = 1) -> str:
    return (await new_cases(client, dep, [p], version))[0]


async def test_worklist_orders_by_priority_probability_arrival_with_either_event_order(single) -> None:
    dep = single
    sops = {k: uid(k) for k in ("a", "b", "c", "d", "e")}
    s = dep.settings
    # a: scored BEFORE it is stored; d: never scored (no model); e: CR
    await publish(s, scored_event(sops["a"], 0.91))
    await asyncio.sleep(0.3)
    await publish(s, *(stored_event(s, sops[k], "CR" if k == "e" else "DX") for k in "abcde"))
    await publish(s, scored_event(sops["b"], 0.30), scored_event(sops["c"], 0.62), scored_event(sops["e"], 0.97),
                  scored_event(sops["d"], None, status="unscored"))
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        for k in "abcde":
            assert await wait_for(lambda k=k: case_ready(client, dep, sops[k]), 30), f"case {k} not scored in time"
        r = await client.get("/verification/worklist", headers=dep.headers("viewer"), params={"limit": 200})
        assert r.status_code == 200, r.text
        ours = [i["case_id"] for i in r.json()["items"] if i["case_id"] in sops.values()]
        assert ours == [sops[k] for k in ("e", "a", "c", "b", "d")]
        item_a = next(i for i in r.json()["items"] if i["case_id"] == sops["a"])
        assert item_a["ai"]["priority"] == "urgent" and item_a["ai"]["probability"] == pytest.approx(0.91)

        # paging returns the same order, two at a time
        seen: list[str] = []
        cursor = None
        for _ in range(20):
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/verification/worklist", headers=dep.headers("viewer"), params=params)).json()
            assert len(page["items"]) <= 2
            seen += [i["case_id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert [x for x in seen if x in sops.values()] == ours

        cr = (await client.get("/verification/worklist", headers=dep.headers("viewer"),
                               params={"modality": "CR"})).json()["items"]
        assert sops["e"] in [i["case_id"] for i in cr] and all(i["modality"] == "CR" for i in cr)
        bad = await client.get("/verification/worklist", headers=dep.headers("viewer"), params={"cursor": "nope"})
        assert bad.status_code == 422 and "cursor" in bad.json()["detail"]


async def test_claim_lease_expiry_and_conflicts(single) -> None:
    dep = single
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        sop = await new_case(client, dep)
        r1, r2 = dep.headers("radiologist", "rad-1"), dep.headers("radiologist", "rad-2")
        c = await client.post(f"/verification/cases/{sop}/claim", headers=r1)
        assert c.status_code == 200 and c.json()["lease_owner"] == "rad-1"
        wl = (await client.get("/verification/worklist", headers=r2, params={"status": "in_progress"})).json()
        assert sop in [i["case_id"] for i in wl["items"]]
        assert (await client.post(f"/verification/cases/{sop}/claim", headers=r2)).status_code == 409
        busy = await client.post(f"/verification/cases/{sop}/reads", headers=r2, json={"label": "normal"})
        assert busy.status_code == 409 and "claimed" in busy.json()["detail"]
        await asyncio.sleep(1.7)  # the 1.5 s lease expires: the case is back on the list
        wl = (await client.get("/verification/worklist", headers=r2, params={"status": "unread"})).json()
        assert sop in [i["case_id"] for i in wl["items"]]
        c2 = await client.post(f"/verification/cases/{sop}/claim", headers=r2)
        assert c2.status_code == 200 and c2.json()["lease_owner"] == "rad-2"
        done = await client.post(f"/verification/cases/{sop}/reads", headers=r2, json={"label": "normal"})
        assert done.status_code == 200 and done.json()["status"] == "final"


async def test_a_renewal_arriving_after_the_release_does_not_claim_the_case_again(single) -> None:
    # The workstation renews its lease every lease/3 s. A renewal in flight when the reader leaves the case reached
    # the service after the release and claimed the case again for a reader who had gone (a flake of the browser
    # test of claims, a real bug for a second reader). A renewal now only extends a live lease of the caller's own.
    dep = single
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        sop = await new_case(client, dep)
        r1, r2 = dep.headers("radiologist", "rad-1"), dep.headers("radiologist", "rad-2")
        url = f"/verification/cases/{sop}/claim"
        first = await client.post(url, headers=r1)
        assert first.status_code == 200
        renewed = await client.post(url, headers=r1, params={"renew": "true"})
        assert renewed.status_code == 200 and renewed.json()["lease_expires_at"] >= first.json()["lease_expires_at"]
        assert (await client.post(url, headers=r2, params={"renew": "true"})).status_code == 409  # not theirs
        assert (await client.delete(url, headers=r1)).status_code == 204
        late = await client.post(url, headers=r1, params={"renew": "true"})
        assert late.status_code == 409 and "ended" in late.json()["detail"]
        view = (await client.get(f"/verification/cases/{sop}", headers=r2)).json()
        assert view["lease_owner"] is None
        assert (await client.post(url, headers=r2)).status_code == 200  # the second reader can take it


async def test_single_read_is_final_publishes_once_and_amendment_publishes_a_new_version(single) -> None:
    dep = single
    await events_of(dep, wait_s=0.5)  # drop what earlier tests published
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        sop = await new_case(client, dep, p=0.8, version=4)
        r1 = dep.headers("radiologist", "rad-1")
        first = await client.post(f"/verification/cases/{sop}/reads", headers=r1,
                                  json={"label": "pneumonia", "confidence": 0.9, "comment": "RLL consolidation"})
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "final" and first.json()["label_version"] == 1
        other = await client.post(f"/verification/cases/{sop}/reads", headers=dep.headers("radiologist", "rad-9"),
                                  json={"label": "normal"})
        assert other.status_code == 409
        amend = await client.post(f"/verification/cases/{sop}/reads", headers=r1, json={"label": "normal"})
        assert amend.status_code == 200 and amend.json()["label_version"] == 2

        wl = (await client.get("/verification/worklist", headers=r1, params={"limit": 200})).json()
        assert sop not in [i["case_id"] for i in wl["items"]], "a final case leaves the worklist"
        view = (await client.get(f"/verification/cases/{sop}", headers=r1)).json()
        assert view["final_label"]["label"] == "normal" and view["final_label"]["version"] == 2
        kinds = [(h["type"], h.get("label")) for h in view["history"]]
        assert kinds == [("label", "pneumonia"), ("label", "normal"), ("read", "pneumonia"), ("read", "normal")]
        assert view["viewer"]["rendered"].endswith(f"/instances/{sop}/rendered")
        assert view["viewer"]["wado_rs"].startswith("/dicomweb/studies/")

    evs = [e for e in await events_of(dep, wait_s=3) if e["detail-type"] == "ImageVerified"
           and e["detail"]["sop_uid"] == sop]
    got = sorted((e["detail"]["label_version"], e["detail"]["label"], e["detail"]["resolution"]) for e in evs)
    assert got == [(1, "pneumonia", "single"), (2, "normal", "amended")], "exactly one ImageVerified per final label"
    d = evs[0]["detail"]
    assert d["patient_pseudo_id"] == pseudonymise(sop, dep.settings.pseudonym_key)
    assert d["frame_key"] == storage.frame_key(STUDY, STUDY + ".7", sop, 1) and d["model_version"] == 4

    async with AwsClients(dep.settings) as c:  # append-only rows, with who and when
        ddb = await c.dynamodb()
        rows = (await ddb.query(TableName=dep.settings.topology.table("labels"),
                                KeyConditionExpression="case_id = :c",
                                ExpressionAttributeValues={":c": {"S": sop}}))["Items"]
        assert len(rows) == 4 and all("at" in r for r in rows)
        assert {r["reader"]["S"] for r in rows if "reader" in r} == {"rad-1"}


async def test_errors_and_idempotent_duplicates(single) -> None:
    dep = single
    await events_of(dep, wait_s=0.3)
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        sop = await new_case(client, dep)
        rad = dep.headers("radiologist", "rad-5")
        unknown = uid("unknown")
        assert (await client.get(f"/verification/cases/{unknown}", headers=rad)).status_code == 404
        assert (await client.post(f"/verification/cases/{unknown}/reads", headers=rad,
                                  json={"label": "normal"})).status_code == 404
        assert (await client.get("/verification/cases/not-a-uid", headers=rad)).status_code == 404
        bad = await client.post(f"/verification/cases/{sop}/reads", headers=rad, json={"label": "maybe"})
        assert bad.status_code == 422
        assert (await client.post(f"/verification/cases/{sop}/reads", headers=rad,
                                  json={"label": "normal", "confidence": 3})).status_code == 422
        viewer = await client.post(f"/verification/cases/{sop}/reads", headers=dep.headers("viewer"),
                                   json={"label": "normal"})
        assert viewer.status_code == 403
        assert (await client.post(f"/verification/cases/{sop}/claim", headers=dep.headers("ml"))).status_code == 403
        assert (await client.get("/verification/worklist")).status_code == 401

        key = {"Idempotency-Key": "read-abc-1"}
        body = {"label": "pneumonia", "confidence": 0.7}
        one, two = await asyncio.gather(
            client.post(f"/verification/cases/{sop}/reads", headers={**rad, **key}, json=body),
            client.post(f"/verification/cases/{sop}/reads", headers={**rad, **key}, json=body))
        statuses = sorted([one.status_code, two.status_code])
        assert statuses in ([200, 200], [200, 409]), (one.text, two.text)
        again = await client.post(f"/verification/cases/{sop}/reads", headers={**rad, **key}, json=body)
        assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true"
        assert again.json()["label_version"] == 1
        mismatch = await client.post(f"/verification/cases/{sop}/reads", headers={**rad, **key},
                                     json={"label": "normal"})
        assert mismatch.status_code == 422 and "Idempotency-Key" in mismatch.json()["detail"]
        view = (await client.get(f"/verification/cases/{sop}", headers=rad)).json()
        assert [h["type"] for h in view["history"]].count("read") == 1, "the duplicate counted once"
    evs = [e for e in await events_of(dep, wait_s=3) if e["detail"].get("sop_uid") == sop]
    assert len(evs) == 1


async def test_indeterminate_is_stored_but_excluded(single) -> None:
    dep = single
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        sop = await new_case(client, dep, p=0.6, version=9)
        r = await client.post(f"/verification/cases/{sop}/reads", headers=dep.headers("radiologist", "rad-3"),
                              json={"label": "indeterminate"})
        assert r.status_code == 200 and r.json()["status"] == "final"
        view = (await client.get(f"/verification/cases/{sop}", headers=dep.headers("viewer"))).json()
        assert view["final_label"]["excluded"] is True
        m = (await client.get("/verification/metrics/model-performance", params={"model_version": 9},
                              headers=dep.headers("viewer"))).json()
        assert m["versions"][0]["sample_size"] == 0


async def test_model_performance_matches_hand_counts_and_degradation_publishes_once(single) -> None:
    dep = single
    rows = [(0.9, "pneumonia"), (0.8, "normal"), (0.7, "pneumonia"), (0.6, "normal"),
            (0.4, "pneumonia"), (0.3, "normal"), (0.2, "pneumonia"), (0.1, "normal")]
    await events_of(dep, wait_s=0.3)
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        sops = await new_cases(client, dep, [p for p, _ in rows], version=7)
        for sop, (_, label) in zip(sops, rows, strict=True):
            r = await client.post(f"/verification/cases/{sop}/reads", headers=dep.headers("radiologist", "rad-7"),
                                  json={"label": label})
            assert r.status_code == 200
        m = (await client.get("/verification/metrics/model-performance", params={"model_version": 7},
                              headers=dep.headers("ml"))).json()
        v = m["versions"][0]
        assert v["sample_size"] == 8 and v["confusion"] == {"tp": 2, "fp": 2, "tn": 2, "fn": 2}
        assert (v["sensitivity"], v["specificity"], v["ppv"]) == (0.5, 0.5, 0.5)
        assert v["auc"] == pytest.approx(10 / 16)
        assert {d["metric"] for d in v["degraded"]} == {"auc", "sensitivity"}
        await client.get("/verification/metrics/model-performance", params={"model_version": 7},
                         headers=dep.headers("ml"))
    evs = [e["detail"] for e in await events_of(dep, wait_s=3) if e["detail-type"] == "ModelPerformanceDegraded"]
    assert sorted((e["metric"], e["model_version"], e["sample_size"]) for e in evs) == [
        ("auc", 7, 8), ("sensitivity", 7, 8)], "one event per breached metric, not one per check"


async def test_double_read_agreement_adjudication_blinding_and_kappa(double) -> None:
    dep = double
    r1, r2, r3 = (dep.headers("radiologist", f"rad-{i}") for i in (1, 2, 3))
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        agree, split = await new_cases(client, dep, [0.7, 0.7])
        for sop in (agree, split):
            assert (await client.post(f"/verification/cases/{sop}/reads", headers=r1,
                                      json={"label": "pneumonia"})).json()["status"] == "open"
        # the second reader cannot see the first reader's label
        hist = (await client.get(f"/verification/cases/{split}", headers=r2)).json()["history"]
        assert hist and all(h.get("hidden") and h["label"] is None for h in hist)
        a = (await client.post(f"/verification/cases/{agree}/reads", headers=r2, json={"label": "pneumonia"})).json()
        assert a["status"] == "final" and a["label_version"] == 1
        s = (await client.post(f"/verification/cases/{split}/reads", headers=r2, json={"label": "normal"})).json()
        assert s["status"] == "adjudication" and s["label_version"] is None
        queue = (await client.get("/verification/worklist", headers=r3, params={"status": "adjudication"})).json()
        assert [i["case_id"] for i in queue["items"]] == [split]
        default = (await client.get("/verification/worklist", headers=r3)).json()
        assert split not in [i["case_id"] for i in default["items"]]
        adj = (await client.post(f"/verification/cases/{split}/reads", headers=r3, json={"label": "normal"})).json()
        assert adj["status"] == "final" and adj["final_label"] == "normal" and adj["label_version"] == 1
        m = (await client.get("/verification/metrics/model-performance", headers=r3)).json()
        # pairs (pneumonia, pneumonia), (pneumonia, normal): po = 1/2, pe = (2*1)/4 = 1/2 -> kappa 0
        assert m["reader_agreement"]["pairs"] == 2 and m["reader_agreement"]["kappa"] == pytest.approx(0.0)
    evs = [e["detail"] for e in await events_of(dep, wait_s=3) if e["detail-type"] == "ImageVerified"]
    assert Counter((e["sop_uid"], e["resolution"]) for e in evs) == {(agree, "agreement"): 1,
                                                                    (split, "adjudicated"): 1}
