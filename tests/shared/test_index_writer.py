"""The index writer against a real moto server: what a transaction sets on a study it already described."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.index_writer import IndexWriter, decode_item
from shared.instance_index import STUDY_SK, IndexRecord, study_pk
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

    async def transact_write_items(self, **kw: Any) -> Any:
        for item in kw["TransactItems"]:
            upd = item.get("Update")
            if upd and upd["Key"]["sk"]["S"] == STUDY_SK:
                self.study_updates.append(upd)
        return await self._ddb.transact_write_items(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddb, name)


async def test_a_study_s_description_is_set_when_it_changes_not_with_every_instance(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    table = settings.topology.table("instances")
    async with AwsClients(settings) as c:
        await bootstrap_topology(c)
        recording = _Recording(await c.dynamodb())

        async def factory() -> Any:
            return recording

        writer = IndexWriter(factory, table)
        for n in (1, 2, 3):  # the first puts the study; the next two only count
            assert await writer.write(_record(n, "CHEST")) == "created"
        counting_only = recording.study_updates[:]
        assert len(counting_only) == 2
        for upd in counting_only:
            assert "ExpressionAttributeNames" not in upd, upd["UpdateExpression"]
            assert upd["UpdateExpression"] == "SET updated_at = :now ADD num_instances :one, num_series :ns"

        assert await writer.write(_record(4, "CHEST WITH CONTRAST")) == "created"  # a new description is set
        assert "study_description" in recording.study_updates[-1]["ExpressionAttributeNames"].values()
        # Another writer (another task) knows nothing of the study, so it states the description it was given.
        other = IndexWriter(factory, table)
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
