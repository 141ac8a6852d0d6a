"""``radloop index backfill`` against a real moto server: study and series items written before the search keys
existed (the real index writer's items with the keys removed) are invisible to the QIDO access paths; the backfill
makes them findable again, a dry run writes nothing, a second run writes nothing, and the items it writes are exactly
what the index writer writes today."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from radloop.cli import app
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.index_writer import write_instance
from shared.instance_index import STUDY_SK, IndexRecord, index_keys_of, series_sk, study_pk
from shared.query.reader import IndexReader
from shared.settings import Settings

KEYS = ("level_pk", "accession_key", "modality_key")


def _record(n: int, *, accession: str, modality: str) -> IndexRecord:
    st, se, so = (f"1.2.826.0.1.3680043.10.998.{k}.{n}" for k in (1, 2, 3))
    return IndexRecord(
        study_uid=st, series_uid=se, sop_uid=so, modality=modality, patient_id=f"P{n}",
        study={"study_uid": st, "study_date": f"2024010{n}", "accession_number": accession, "level_sk": f"2024010{n}#{st}",
               "patient_id": f"P{n}"},
        series={"study_uid": st, "series_uid": se, "modality": modality, "series_number": 1, "patient_id": f"P{n}"},
        instance={"sop_uid": so, "study_uid": st, "series_uid": se, "number_of_frames": 1, "dicom_json": "{}",
                  "content_sha256": f"{n:064x}"})


async def _items(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    async with AwsClients(settings) as c:
        ddb = await c.dynamodb()
        out: dict[tuple[str, str], dict[str, Any]] = {}
        kw: dict[str, Any] = {"TableName": settings.topology.table("instances")}
        for _ in range(100):
            page = await ddb.scan(**kw)
            for it in page["Items"]:
                out[(it["pk"]["S"], it["sk"]["S"])] = {k: next(iter(v.values())) for k, v in it.items()}
            if "LastEvaluatedKey" not in page:
                return out
            kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        raise AssertionError("the scan did not end")


async def _found(settings: Settings, accession: str, modality: str) -> dict[str, int]:
    async with AwsClients(settings) as c:
        r = IndexReader(c.dynamodb, settings.topology.table("instances"), series_cache_bytes=1 << 20)
        return {"accession": len([x async for x in r.accession_items(accession)]),
                "modality": len([x async for x in r.modality_items(modality)]),
                "studies": len([x async for x in r.level_items("STUDY")])}


def test_backfill_makes_legacy_items_searchable(make_settings: Callable[..., Settings], aws_endpoint: str,
                                                tmp_path: Path) -> None:
    settings = make_settings()
    records = [_record(n, accession="ACC-OLD", modality="MR") for n in (1, 2)] + [
        _record(3, accession="ACC-NEW", modality="CT")]

    async def load() -> None:
        async with AwsClients(settings) as c:
            await bootstrap_topology(c)
            ddb = await c.dynamodb()
            table = settings.topology.table("instances")
            for rec in records:
                await write_instance(ddb, table, rec)
            for rec in records[:2]:  # as an index writer from before the search keys wrote them
                for sk in (STUDY_SK, series_sk(rec.series_uid)):
                    await ddb.update_item(TableName=table, Key={"pk": {"S": study_pk(rec.study_uid)}, "sk": {"S": sk}},
                                          UpdateExpression="REMOVE " + ", ".join(KEYS))

    asyncio.run(load())
    written = asyncio.run(_items(settings))
    assert asyncio.run(_found(settings, "ACC-OLD", "MR")) == {"accession": 0, "modality": 0, "studies": 1}

    env = {"RADLOOP_ENVIRONMENT": "local", "RADLOOP_PREFIX": settings.prefix, "RADLOOP_VAR_DIR": str(tmp_path),
           "AWS_ENDPOINT_URL": aws_endpoint}

    def cli(*args: str) -> dict[str, Any]:
        r = CliRunner().invoke(app, ["index", "backfill", "--json", "--table", "instances", *args], env=env,
                               catch_exceptions=False)
        assert r.exit_code == 0, r.stdout + r.stderr
        import json

        return dict(json.loads(r.stdout)["instances"])

    dry = cli("--dry-run")
    assert (dry["scanned"], dry["up_to_date"], dry["updated"], dry["dry_run"]) == (6, 2, 4, True)
    assert asyncio.run(_items(settings)) == written  # a dry run writes nothing
    done = cli("--page-size", "2")  # several Scan pages
    assert (done["scanned"], done["up_to_date"], done["updated"], done["changed_meanwhile"]) == (6, 2, 4, 0)
    assert done["pages"] >= 3
    assert asyncio.run(_found(settings, "ACC-OLD", "MR")) == {"accession": 2, "modality": 2, "studies": 3}
    again = cli()
    assert (again["updated"], again["up_to_date"]) == (0, 6)  # safe to repeat
    # Every study and series item now carries what the index writer writes today.
    for item in asyncio.run(_items(settings)).values():
        want = index_keys_of(item)
        if want is not None:
            assert all(item.get(k) == v for k, v in want.items() if v is not None), item
    # Text output for a person.
    r = CliRunner().invoke(app, ["index", "backfill", "--dry-run"], env=env, catch_exceptions=False)
    assert r.exit_code == 0 and "6 study and series items scanned" in r.stdout and "would update 0" in r.stdout
