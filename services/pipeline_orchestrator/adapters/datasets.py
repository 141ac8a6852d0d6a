"""Dataset manifests in the ml bucket (content-addressed by their hash), the locked evaluation set's versions, and
the "no champion" marker."""

from __future__ import annotations

import json

from services.pipeline_orchestrator.domain.locked_set import LockedSet, LockedSetError, check_append_only, describe
from services.pipeline_orchestrator.domain.snapshot import Snapshot
from shared.aws import AwsClients
from shared.bootstrap import ensure_no_champion_marker
from shared.storage import dataset_manifest_key

#: The locked evaluation set: ``locked-eval/v{n:04d}/manifest.jsonl`` and ``version.json`` (its version, sha256 and
#: counts) per version, and ``current.json`` naming the newest. Versions are never overwritten. The pipeline's
#: ``LockedSetUri`` is a version's prefix, so Preprocess receives both files.
LOCKED_PREFIX = "locked-eval/"
LOCKED_POINTER = LOCKED_PREFIX + "current.json"


def locked_prefix(version: int) -> str:
    return f"{LOCKED_PREFIX}v{version:04d}/"


def locked_key(version: int, name: str = "manifest.jsonl") -> str:
    return locked_prefix(version) + name


class DatasetStore:
    """Writes the manifests the pipeline trains on, and the locked evaluation set it is judged on."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.bucket = clients.settings.topology.bucket("ml")

    async def put_manifest(self, snap: Snapshot) -> str:
        """Store the snapshot's manifest under its own hash; returns its ``s3://`` URI."""
        key = dataset_manifest_key(snap.sha256)
        s3 = await self.clients.s3()
        await s3.put_object(Bucket=self.bucket, Key=key, Body=snap.data, ContentType="application/x-ndjson")
        return f"s3://{self.bucket}/{key}"

    async def locked_set(self) -> LockedSet | None:
        """The newest version of the locked set (its bytes checked against the recorded hash), or None."""
        s3 = await self.clients.s3()
        try:
            ptr = json.loads(await (await s3.get_object(Bucket=self.bucket, Key=LOCKED_POINTER))["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None
        body = await (await s3.get_object(Bucket=self.bucket, Key=ptr["key"]))["Body"].read()
        locked = describe(body, int(ptr["version"]))
        if locked.sha256 != ptr["sha256"]:
            raise LockedSetError(f"locked set v{ptr['version']} does not match its recorded sha256")
        return locked

    async def put_locked_set(self, new: LockedSet, previous: LockedSet | None) -> str:
        """Store a new version (append-only against ``previous``; an existing version is never overwritten) and
        point ``current.json`` at it; returns its ``s3://`` URI."""
        check_append_only(previous.data if previous else b"", new.data)
        s3 = await self.clients.s3()
        key = locked_key(new.version)
        try:
            stored = await (await s3.get_object(Bucket=self.bucket, Key=key))["Body"].read()
        except s3.exceptions.NoSuchKey:
            stored = None
        if stored is not None and stored != new.data:
            raise LockedSetError(f"locked set v{new.version} already exists with other contents")
        if stored is None:
            await s3.put_object(Bucket=self.bucket, Key=key, Body=new.data, ContentType="application/x-ndjson")
            await s3.put_object(Bucket=self.bucket, Key=locked_key(new.version, "version.json"),
                                ContentType="application/json", Body=json.dumps(new.summary()).encode())
        await s3.put_object(Bucket=self.bucket, Key=LOCKED_POINTER, ContentType="application/json",
                            Body=json.dumps({"version": new.version, "sha256": new.sha256, "key": key}).encode())
        return self.locked_uri(new)

    def locked_uri(self, locked: LockedSet) -> str:
        """The version's prefix (manifest.jsonl and version.json): the pipeline's ``LockedSetUri``."""
        return f"s3://{self.bucket}/{locked_prefix(locked.version)}"

    async def ensure_no_champion_marker(self) -> None:
        """Evaluate's champion input must not be an empty prefix when there is no champion."""
        await ensure_no_champion_marker(await self.clients.s3(), self.bucket)
