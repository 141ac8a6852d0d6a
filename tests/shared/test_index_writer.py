"""The index writer against a real moto server: what a transaction sets on a study it already described."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.index_writer import IndexWriter, decode_item
from shared.instance_index import STUDY_SK, IndexRecord, series_sk, study_pk
from shared.settings import Settings

pytestmark = pytest.mark.integration

STUDY, SERIES = "1.2.826.0.1.3680043.10.997.1", "1.2.826.0.1.3680043.10.997.2"


def _record(n: int, description: str) -> IndexRecord:
    sop = f"1.2.826.0.1.3680043.10.997.3.{n}"
    return IndexRecord(
        study_uid=STUDY, series_uid=SERIES, sop_uid=sop, modality="CT", patient_id="P1",
        study={"study_uid": STUDY, "study_date": "20240101", "study_description": description,
               "accession_number": "ACC1", "level_sk": f"20240101#{STUDY}", "patient_id": "P1"},
        series={"study_uid": STUDY, "series_uid": SERIES, "modality": "CT", "series_number": 1, "patient_id": "P1"},
        instance={"sop_uid": sop, "study_uid": STUDY, "series_uid": SERIES, "number_of_frames": 1,
                  "dicom_json": "{}", "content_sha256": f"{n:064x}"})


class _Recording:
    """The real DynamoDB client, remembering the study item's update of each transaction."""

    def __init__(self, ddb: Any) -> None:
        self._ddb = ddb
        self.study_updates: list[dict[str, Any]] = []
        self.transactions: list[list[dict[str, Any]]] = []

    async def transact_write_items(self, **kw: Any) -> Any:
        self.transactions.append(kw["TransactItems"])
        for item in kw["TransactItems"]:
            upd = item.get("Update")
            if upd and upd["Key"]["sk"]["S"] == STUDY_SK:
                self.study_updates.append(upd)
        return await self._ddb.transact_write_items(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddb, name)


@dataclass
class _Index:
    """A fresh deployment's instance table, and its DynamoDB client as :class:`_Recording` sees it."""

    clients: AwsClients
    table: str
    recording: _Recording

    def writer(self) -> IndexWriter:
        async def factory() -> Any:
            return self.recording

        return IndexWriter(factory, self.table)


@pytest.fixture
async def index(make_settings: Callable[..., Settings]) -> AsyncIterator[_Index]:
    settings = make_settings()
    async with AwsClients(settings) as c:
        await bootstrap_topology(c)
        yield _Index(c, settings.topology.table("instances"), _Recording(await c.dynamodb()))


async def test_a_study_s_description_is_set_when_it_changes_not_with_every_instance(index: _Index) -> None:
    c, table, recording = index.clients, index.table, index.recording
    writer = index.writer()
    for n in (1, 2, 3):  # the first puts the study; the next two only count
        assert await writer.write(_record(n, "CHEST")) == "created"
    counting_only = recording.study_updates[:]
    assert writer.batches == 0  # one at a time: nothing to share
    assert len(counting_only) == 2
    for upd in counting_only:
        assert "ExpressionAttributeNames" not in upd, upd["UpdateExpression"]
        assert upd["UpdateExpression"].startswith("SET updated_at = :now ADD num_instances :")  # nothing else SET

    assert await writer.write(_record(4, "CHEST WITH CONTRAST")) == "created"  # a new description is set
    assert "study_description" in recording.study_updates[-1]["ExpressionAttributeNames"].values()
    # Another writer (another task) knows nothing of the study, so it states the description it was given.
    other = index.writer()
    assert await other.write(_record(5, "CHEST, REVIEWED")) == "created"
    assert "study_description" in recording.study_updates[-1]["ExpressionAttributeNames"].values()

    ddb = await c.dynamodb()
    got = await ddb.get_item(TableName=table, Key={"pk": {"S": study_pk(STUDY)}, "sk": {"S": STUDY_SK}},
                             ConsistentRead=True)
    study = decode_item(got["Item"])
    assert study["study_description"] == "CHEST, REVIEWED"
    assert study["accession_key"] == "ACC1"
    assert int(study["num_instances"]) == 5 and int(study["num_series"]) == 1
    assert study["modalities"] == ["CT"]


async def test_concurrent_instances_share_transactions_and_each_keeps_its_own_outcome(index: _Index) -> None:
    """Group commit: instances of a known series written at once go in shared transactions with one ADD per series
    and study; a batch that holds a duplicate or an instance whose caller's own condition fails is cancelled
    whole, and then every instance is written alone: the others are created, the duplicate is "exists", the
    failing one raises, and the counts are exact."""
    c, table, recording = index.clients, index.table, index.recording
    writer = index.writer()
    assert await writer.write(_record(1, "CHEST")) == "created"  # the study and series become known
    assert await writer.write(_record(2, "CHEST")) == "created"
    outcomes = await asyncio.gather(*(writer.write(_record(n, "CHEST")) for n in range(3, 23)))
    assert outcomes == ["created"] * 20
    assert writer.batches >= 1 and writer.batched_instances >= 2
    assert len(recording.transactions) < 2 + 20  # fewer transactions than instances

    missing = {"ConditionCheck": {"TableName": table, "Key": {"pk": {"S": "nowhere"}, "sk": {"S": "nothing"}},
                                  "ConditionExpression": "attribute_exists(pk)"}}
    before = writer.batches
    results = await asyncio.gather(
        *(writer.write(_record(n, "CHEST")) for n in range(23, 28)),
        writer.write(_record(5, "CHEST")),  # already indexed, same content
        writer.write(_record(28, "CHEST"), extra_items=[missing]),
        return_exceptions=True)
    assert results[:5] == ["created"] * 5
    assert results[5] == "exists"
    assert isinstance(results[6], ClientError)
    assert writer.batches >= before  # the cancelled batch is not counted as committed

    ddb = await c.dynamodb()
    got = await ddb.batch_get_item(RequestItems={table: {"Keys": [
        {"pk": {"S": study_pk(STUDY)}, "sk": {"S": STUDY_SK}},
        {"pk": {"S": study_pk(STUDY)}, "sk": {"S": series_sk(SERIES)}}], "ConsistentRead": True}})
    items = {i["sk"]["S"]: decode_item(i) for i in got["Responses"][table]}
    assert int(items[STUDY_SK]["num_instances"]) == 27 and int(items[STUDY_SK]["num_series"]) == 1
    assert int(items[series_sk(SERIES)]["num_instances"]) == 27
    page = await ddb.query(TableName=table, KeyConditionExpression="pk = :p AND begins_with(sk, :i)",
                           ExpressionAttributeValues={":p": {"S": study_pk(STUDY)}, ":i": {"S": "INSTANCE#"}},
                           ConsistentRead=True, Select="COUNT")
    assert page["Count"] == 27  # instance 28 was not written
