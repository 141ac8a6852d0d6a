"""The chaos run's own parts, without processes: its checks count what they claim to (a lost image, a second
``InstanceScored`` effect, a DLQ message each fail the run; a redelivered copy of one event does not), and the
fault hop forwards unchanged outside its window and answers AWS-shaped errors inside it."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from radloop.chaos import Chaos, Config, Image
from radloop.chaos_hop import HOP, aws_service, create_app

SOPS = ("1.2.3.1", "1.2.3.2", "1.2.3.3")


def _chaos() -> Chaos:
    c = Chaos(Config(images=3, verify_every=1000))
    c.acked = [Image(i, "stow", b"", "1.2.9", "1.2.8", sop, acked_at=1.0) for i, sop in enumerate(SOPS)]
    for sop in SOPS:
        c.fig.events["InstanceStored"][sop].append(f"stored-{sop}")
        c.fig.events["InstanceScored"][sop].append(f"scored-{sop}")
    return c


def _state(**over: object) -> dict[str, object]:
    st: dict[str, object] = {
        "queues": {"q": 0}, "dlqs": {"q-dlq": 0}, "imports_left": 0, "imports_rejected": 0, "outbox": 0,
        "pending_case_outboxes": 0, "missing_index": [], "duplicate_index": [], "missing_score": [],
        "missing_case": [], "case_unscored": [], "derived_index": ["1.2.7.1"],
    }
    st.update(over)
    return st


def test_a_clean_run_passes_and_a_redelivered_copy_is_not_a_duplicate() -> None:
    c = _chaos()
    c.fig.events["InstanceScored"][SOPS[0]].append(f"scored-{SOPS[0]}")  # the same event delivered twice
    r = c.result(_state(), 10.0, 5.0, {"faulted": {"dynamodb": 3}})
    assert c.failures == []
    assert (r["images_sent"], r["lost"], r["duplicated"]) == (3, 0, 0)
    assert r["redelivered_event_copies"]["InstanceScored"] == 1
    assert r["checks"]["derived_index_rows"] == 1


def test_lost_duplicated_and_dead_lettered_fail_the_run() -> None:
    c = _chaos()
    c.fig.events["InstanceScored"][SOPS[1]].append("scored-again")  # a second scoring: another effect
    r = c.result(_state(missing_score=[SOPS[2]], dlqs={"q-dlq": 2}, outbox=1), 10.0, 5.0, {})
    assert (r["lost"], r["duplicated"]) == (1, 1)
    assert r["lost_sops"] == [SOPS[2]] and list(r["duplicated_detail"]) == [SOPS[1]]
    assert r["duplicated_detail"][SOPS[1]]["InstanceScored"] == 2
    assert {f.split(":")[0] for f in c.failures} >= {"lost", "duplicated", "dlq_messages", "outbox_items"}


def test_an_image_without_its_instance_stored_event_fails_the_run() -> None:
    c = _chaos()
    del c.fig.events["InstanceStored"][SOPS[0]]
    c.result(_state(), 1.0, 1.0, {})
    assert "instance_stored_missing: 1" in c.failures


def test_the_aws_service_comes_from_the_credential_scope() -> None:
    auth = ("AWS4-HMAC-SHA256 Credential=testing/20261205/us-east-1/dynamodb/aws4_request, "
            "SignedHeaders=host, Signature=abc")
    assert aws_service({"Authorization": auth}) == "dynamodb"
    assert aws_service({"Authorization": auth.replace("/dynamodb/", "/events/")}) == "events"
    assert aws_service({}) == ""


async def test_the_hop_forwards_outside_its_window_and_faults_inside_it() -> None:
    seen: list[bytes] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(status=200, body=b'{"ok": true}', headers={"Content-Type": "application/json"})

    up_app = web.Application()
    up_app.router.add_route("*", "/{tail:.*}", upstream)
    runners = [web.AppRunner(up_app), web.AppRunner(create_app("http://127.0.0.1:1", seed=1))]
    for r in runners:
        await r.setup()
    sites = [web.TCPSite(r, "127.0.0.1", 0) for r in runners]
    for s in sites:
        await s.start()
    up_port, hop_port = (s._server.sockets[0].getsockname()[1] for s in sites)  # type: ignore[union-attr]
    runners[1].app[HOP].upstream = f"http://127.0.0.1:{up_port}"
    hop = f"http://127.0.0.1:{hop_port}"
    ddb = {"Authorization": "AWS4-HMAC-SHA256 Credential=k/20261205/us-east-1/dynamodb/aws4_request, Signature=x",
           "X-Amz-Target": "DynamoDB_20120810.PutItem"}
    sqs = {**ddb, "Authorization": ddb["Authorization"].replace("/dynamodb/", "/sqs/")}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(hop + "/", data=b"item-1", headers=ddb) as r:
                assert r.status == 200 and await r.read() == b'{"ok": true}'
            async with http.post(hop + "/__chaos/faults", json={"seconds": 30, "rate": 1.0,
                                                                 "services": ["dynamodb"]}) as r:
                assert r.status == 200
            async with http.post(hop + "/", data=b"item-2", headers=ddb) as r:
                body = await r.json(content_type=None)
                assert r.status in (400, 500, 503) and body["__type"].startswith("com.amazonaws.dynamodb")
            async with http.post(hop + "/", data=b"msg", headers=sqs) as r:  # SQS is never faulted
                assert r.status == 200
            async with http.get(hop + "/__chaos/stats") as r:
                stats = await r.json()
    finally:
        for r in runners:
            await r.cleanup()
    assert seen == [b"item-1", b"msg"]  # the faulted call never reached the upstream
    assert stats["faulted"] == {"dynamodb": 1} and stats["forwarded"] == {"dynamodb": 1, "sqs": 1}


def test_the_progress_line_reads_either_shape_of_the_state() -> None:
    """While queues hold messages the state has the queues only (the 2,000-image run crashed on a missing key)."""
    from radloop.chaos import progress_line

    busy = {"queues": {"t-1-interop": 3241, "t-1-triage": 0, "t-1-verification": 12}, "dlqs": {}, "imports_left": 0}
    assert progress_line(busy) == "3253 messages queued (interop 3241, verification 12)"
    done = {"queues": {"t-1-interop": 0}, "dlqs": {}, "missing_index": [], "missing_score": ["1.2"],
            "missing_case": []}
    assert progress_line(done) == "0 messages queued, 0 index rows, 1 scores and 0 cases missing"
