"""``radloop index backfill`` on triage's scores and verification's cases, against a real moto server.

Records written the way the services write them today, then with the sparse-index keys removed as the older code
left them (an in-place upgrade), are invisible to what reads those indexes:
- an image that arrived before any model is missing from the backlog the first champion scores (never scored);
- an unread scored image is missing from those a new champion re-scores;
- a case's outcome is missing from live performance, its reader pair from agreement, its unpublished ImageVerified
  from the outbox sweep, and its model version from the versions list.
The backfill brings each back, marks a score whose case is final as read instead of unread, and a second run
writes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from radloop.cli import app
from services.triage.adapters.scores import Scores
from services.verification.adapters.cases import VERSIONS_KEY, CaseStore
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.ddb import to_value
from shared.events import InstanceScored
from shared.settings import Settings

UID = "1.2.826.0.1.3680043.10.997"


def _scored(n: int, status: Any = "scored") -> InstanceScored:
    return InstanceScored(study_uid=f"{UID}.1.{n}", series_uid=f"{UID}.2.{n}", sop_uid=f"{UID}.3.{n}", status=status,
                          priority="routine", probability=0.3 if status == "scored" else None, threshold=0.5,
                          model_version=2 if status == "scored" else None, reason="" if status == "scored" else "no model")


def _case(n: int, *, outbox: bool = False, paired: bool = False) -> dict[str, Any]:
    at = f"2026-12-01T10:00:0{n}+00:00"
    case: dict[str, Any] = {
        "case_id": f"{UID}.3.{n}", "study_uid": f"{UID}.1.{n}", "series_uid": f"{UID}.2.{n}", "sop_uid": f"{UID}.3.{n}",
        "status": "final", "priority_sk": f"1#0.700000#{at}#{UID}.3.{n}", "arrived_at": at,
        "score": {"status": "scored", "probability": 0.3, "threshold": 0.5, "model_version": 2,
                  "event_at": "2026-12-01T09:00:00+00:00"},
        "final": {"label": "pneumonia" if n % 2 else "normal", "at": at},
    }
    if outbox:
        case["outbox"] = [{"event": "ImageVerified", "id": f"verified-{n}"}]
        case["outbox_since"] = 1.0
    if paired:
        case["paired_reads"] = [{"reader": "dr-a", "label": "normal"}, {"reader": "dr-b", "label": "normal"}]
    return case


async def _remove(settings: Settings, table: str, key: dict[str, Any], attrs: tuple[str, ...]) -> None:
    async with AwsClients(settings) as c:
        ddb = await c.dynamodb()
        await ddb.update_item(TableName=settings.topology.table(table), Key={k: to_value(v) for k, v in key.items()},
                              UpdateExpression="REMOVE " + ", ".join(attrs))


async def _views(settings: Settings) -> dict[str, Any]:
    async with AwsClients(settings) as c:
        scores, store = Scores(c), CaseStore(c)
        return {
            "backlog": sorted(r["sop_uid"] for r in await scores.backlog(100)),
            "unread": sorted(r["sop_uid"] for r in await scores.unread(100, not_version=9)),
            "outcomes": sorted(r["case_id"] for r in await store.outcomes(2, 100)),
            "paired": sorted(r["case_id"] for r in await store.paired(100)),
            "outbox": sorted(r["case_id"] for r in await store.pending_outboxes(1e12)),
            "versions": await store.outcome_versions(),
            "read": (await scores.recorded(f"{UID}.3.3") or {}).get("verified"),
        }


def test_backfill_brings_legacy_scores_and_cases_back_into_their_indexes(
        make_settings: Callable[..., Settings], aws_endpoint: str, tmp_path: Path) -> None:
    settings = make_settings()

    async def load() -> None:
        async with AwsClients(settings) as c:
            await bootstrap_topology(c)
            scores, store = Scores(c), CaseStore(c)
            await scores.put(_scored(1, "unscored"), awaiting_model=True)  # waits for a first model
            await scores.put(_scored(2), awaiting_model=False)  # scored, nobody has read it (no case yet)
            await scores.put(_scored(3), awaiting_model=False)  # scored, and its case below is final: read
            await scores.put(_scored(4), awaiting_model=False)  # written today: keeps its keys
            for n, kw in ((3, {}), (5, {"outbox": True}), (6, {"paired": True}), (7, {})):
                await store.mutate(f"{UID}.3.{n}", lambda cur, n=n, kw=kw: (_case(n, **kw), [], None))
        # As the older code left them: no backlog or unread key (and no read mark), cases without their index keys
        await _remove(settings, "scores", {"sop_uid": f"{UID}.3.1"}, ("backlog_pk",))
        await _remove(settings, "scores", {"sop_uid": f"{UID}.3.2"}, ("unread_pk", "arrived_at"))
        await _remove(settings, "scores", {"sop_uid": f"{UID}.3.3"}, ("unread_pk",))
        for n in (3, 5, 6):
            await _remove(settings, "cases", {"case_id": f"{UID}.3.{n}"},
                          ("outbox_pk", "outcome_pk", "outcome_sk", "pair_pk", "pair_sk"))
        await _remove(settings, "state", {"key": VERSIONS_KEY}, ("versions",))

    asyncio.run(load())
    before = asyncio.run(_views(settings))
    assert before == {"backlog": [], "unread": [f"{UID}.3.4"], "outcomes": [f"{UID}.3.7"], "paired": [],
                      "outbox": [], "versions": [], "read": None}

    env = {"RADLOOP_ENVIRONMENT": "local", "RADLOOP_PREFIX": settings.prefix, "RADLOOP_VAR_DIR": str(tmp_path),
           "AWS_ENDPOINT_URL": aws_endpoint}

    def cli(*args: str) -> dict[str, Any]:
        r = CliRunner().invoke(app, ["index", "backfill", "--json", "--table", "scores", "--table", "cases", *args],
                               env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.stdout + r.stderr
        return dict(json.loads(r.stdout))

    dry = cli("--dry-run")
    assert {t: (r["scanned"], r["updated"]) for t, r in dry.items()} == {"scores": (4, 3), "cases": (4, 3)}
    assert asyncio.run(_views(settings)) == before  # a dry run writes nothing

    done = cli("--page-size", "2")
    assert {t: (r["scanned"], r["up_to_date"], r["updated"], r["changed_meanwhile"]) for t, r in done.items()} == {
        "scores": (4, 1, 3, 0), "cases": (4, 1, 3, 0)}
    every = [f"{UID}.3.{n}" for n in (3, 5, 6, 7)]
    assert asyncio.run(_views(settings)) == {
        "backlog": [f"{UID}.3.1"],  # the first champion scores it
        "unread": [f"{UID}.3.2", f"{UID}.3.4"],  # re-scored by a new champion; 3 was read, so it is not
        "outcomes": every, "paired": [f"{UID}.3.6"], "outbox": [f"{UID}.3.5"], "versions": [2], "read": True}

    again = cli()
    assert {t: (r["updated"], r["up_to_date"]) for t, r in again.items()} == {"scores": (0, 4), "cases": (0, 4)}
    r = CliRunner().invoke(app, ["index", "backfill", "--dry-run", "--table", "cases"], env=env, catch_exceptions=False)
    assert r.exit_code == 0 and "cases: 4 items scanned" in r.stdout and "would update 0" in r.stdout
