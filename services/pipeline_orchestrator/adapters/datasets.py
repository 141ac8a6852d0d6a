"""Dataset manifests in the ml bucket (content-addressed by their hash), and the "no champion" marker."""

from __future__ import annotations

from services.pipeline_orchestrator.domain.snapshot import Snapshot
from shared.aws import AwsClients
from shared.bootstrap import ensure_no_champion_marker
from shared.storage import dataset_manifest_key


class DatasetStore:
    """Writes the manifests the pipeline trains on."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.bucket = clients.settings.topology.bucket("ml")

    async def put_manifest(self, snap: Snapshot) -> str:
        """Store the snapshot's manifest under its own hash; returns its ``s3://`` URI."""
        key = dataset_manifest_key(snap.sha256)
        s3 = await self.clients.s3()
        await s3.put_object(Bucket=self.bucket, Key=key, Body=snap.data, ContentType="application/x-ndjson")
        return f"s3://{self.bucket}/{key}"

    async def ensure_no_champion_marker(self) -> None:
        """Evaluate's champion input must not be an empty prefix when there is no champion."""
        await ensure_no_champion_marker(await self.clients.s3(), self.bucket)
