"""Ingestion with de-identification on: an object the interop service drops under ``imports/interop/`` is derived
from an instance already stored (and de-identified), so it is stored as it is, in its source's study; the same
object dropped anywhere else in the drop folder is de-identified (its Study Instance UID remapped) like any import."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from services.interop.domain import builders as b
from shared.aws import AwsClients
from shared.index_writer import find_by_sop, get_instance
from shared.settings import Settings
from shared.storage import INTEROP_DROP_PREFIX
from tests.ingestion.inproc import pipeline
from training.synthetic import generate_case


async def test_interop_drops_are_not_de_identified_again(adeployment: Settings, clients: AwsClients) -> None:
    pipe, pool = pipeline(adeployment, clients, deidentify=True)
    try:
        src, _, _ = generate_case(7, 11, size=64, prevalence=0.5, difficulty=0.0)
        at = datetime(2026, 1, 5, tzinfo=UTC)
        derived = b.build_ai_sr(src, b.Score(0.8, 0.5, at), b.Algorithm("radloop", "1", 1))
        other = b.build_ai_sr(src, b.Score(0.8, 0.5, at), b.Algorithm("radloop", "1", 2))  # another SOP UID
        bucket = adeployment.topology.bucket("ingestion")
        s3 = await clients.s3()
        for key, ds in ((f"{INTEROP_DROP_PREFIX}{derived.SOPInstanceUID}.dcm", derived), ("imports/elsewhere.dcm", other)):
            await s3.put_object(Bucket=bucket, Key=key, Body=b.to_bytes(ds))
            out = await pipe.ingest_dropped(bucket, key)
            assert out.get("status") in ("stored", "created"), out
        ddb = await clients.dynamodb()
        table = adeployment.topology.table("instances")
        study, series, sop = str(src.StudyInstanceUID), str(derived.SeriesInstanceUID), str(derived.SOPInstanceUID)
        kept = await get_instance(ddb, table, study, series, sop)
        assert kept is not None, "the interop drop was de-identified again (its UIDs remapped out of the study)"
        assert kept["content_sha256"] == hashlib.sha256(b.to_bytes(derived)).hexdigest()  # stored as it was built
        # the same kind of object from anywhere else is de-identified: its UIDs are remapped, out of the source study
        assert await get_instance(ddb, table, study, str(other.SeriesInstanceUID), str(other.SOPInstanceUID)) is None
        assert await find_by_sop(ddb, table, str(other.SOPInstanceUID)) is None
    finally:
        await pipe.outbox.stop(timeout_s=1)
        pool.shutdown()
