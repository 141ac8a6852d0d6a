"""Routes the workstation needs: the adjudicator sees both blinded reads; ``/verification/my-reads`` for amending."""

from __future__ import annotations

import httpx
import pytest

from tests.verification.test_verification_service import new_cases

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_adjudicator_sees_both_reads_but_the_readers_stay_blind(double) -> None:
    dep = double
    r1, r2, r3 = (dep.headers("radiologist", f"rad-{i}") for i in (1, 2, 3))
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        (split,) = await new_cases(client, dep, [0.8])
        await client.post(f"/verification/cases/{split}/reads", headers=r1, json={"label": "pneumonia"})
        s = (await client.post(f"/verification/cases/{split}/reads", headers=r2, json={"label": "normal"})).json()
        assert s["status"] == "adjudication"
        # the adjudicator (not one of the two readers) decides between the two reads, so sees them
        hist = (await client.get(f"/verification/cases/{split}", headers=r3)).json()["history"]
        assert sorted((h["reader"], h["label"]) for h in hist if h["type"] == "read") == [
            ("rad-1", "pneumonia"), ("rad-2", "normal")]
        assert not any(h.get("hidden") for h in hist)
        # each reader still sees only their own read; a viewer (cannot verify) sees neither
        for who, headers in (("rad-1", r1), ("rad-2", r2), ("viewer", dep.headers("viewer", "v-1"))):
            hist = (await client.get(f"/verification/cases/{split}", headers=headers)).json()["history"]
            assert all(h["hidden"] for h in hist if h["type"] == "read" and h["reader"] != who), who


async def test_my_reads_lists_the_final_labels_the_caller_may_amend(single) -> None:
    dep = single
    me, other = dep.headers("radiologist", "rad-me"), dep.headers("radiologist", "rad-other")
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        mine, theirs = await new_cases(client, dep, [0.9, 0.2])
        assert (await client.post(f"/verification/cases/{mine}/reads", headers=me,
                                  json={"label": "pneumonia"})).json()["status"] == "final"
        await client.post(f"/verification/cases/{theirs}/reads", headers=other, json={"label": "normal"})
        out = (await client.get("/verification/my-reads", headers=me)).json()
        assert [(i["case_id"], i["final_label"]["label"]) for i in out["items"]] == [(mine, "pneumonia")]
        assert (await client.get("/verification/my-reads", headers=dep.headers("viewer"))).status_code == 403
        assert (await client.get("/verification/my-reads")).status_code == 401


async def test_the_worklist_says_what_the_caller_read_and_hides_who_holds_a_double_read(double) -> None:
    """Found by a review (session 22): in double reading, the workstation offered the first reader their own
    half-read case as the next one (the worklist did not say who had read it), and showed the second reader the
    first one's user id on a claimed case."""
    dep = double
    r1, r2 = dep.headers("radiologist", "rad-w1"), dep.headers("radiologist", "rad-w2")
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        held, read = await new_cases(client, dep, [0.7, 0.6])
        assert (await client.post(f"/verification/cases/{held}/claim", headers=r1)).status_code == 200
        assert (await client.post(f"/verification/cases/{read}/reads", headers=r1,
                                  json={"label": "normal"})).json()["status"] == "open"

        async def rows(headers: dict[str, str]) -> dict[str, dict]:
            items = (await client.get("/verification/worklist", headers=headers, params={"limit": 200})).json()
            return {i["case_id"]: i for i in items["items"] if i["case_id"] in (held, read)}

        mine, theirs = await rows(r1), await rows(r2)
        assert mine[held]["lease_owner"] == "rad-w1" and theirs[held]["lease_owner"] == "another reader"
        assert (mine[read]["read_by_me"], theirs[read]["read_by_me"]) == (True, False)
        assert mine[held]["read_by_me"] is False and theirs[read]["reads_done"] == 1
        view = (await client.get(f"/verification/cases/{held}", headers=r2)).json()
        assert view["lease_owner"] == "another reader"


async def test_the_worklist_filters_by_priority_on_the_server(single) -> None:
    """Found by a review (session 22): the workstation filtered one page in the browser, so "Routine" showed an empty
    page while routine cases waited on later pages."""
    dep = single
    h = dep.headers("radiologist", "rad-p")
    async with httpx.AsyncClient(base_url=dep.service.url, timeout=10) as client:
        urgent, routine = await new_cases(client, dep, [0.97, 0.05])
        for prio, want, other in (("urgent", urgent, routine), ("routine", routine, urgent)):
            r = await client.get("/verification/worklist", headers=h, params={"priority": prio, "limit": 200})
            assert r.status_code == 200, r.text
            ids = [i["case_id"] for i in r.json()["items"]]
            assert want in ids and other not in ids
            assert all(i["ai"]["priority"] == prio for i in r.json()["items"])
        assert (await client.get("/verification/worklist", headers=h, params={"priority": "high"})).status_code == 422
