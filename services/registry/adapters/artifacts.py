"""S3 reads and writes of the registry: evaluation, per-case predictions, manifest, the artefact's own card and
config (read through :mod:`shared.model_format`), and the model cards it writes."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlparse

from services.registry.domain.card import card_markdown, parse_predictions
from shared.aws import AwsClients
from shared.datasets import parse as parse_manifest
from shared.model_format import CARD_FILE, CONFIG_FILE, read_json_members
from shared.storage import model_prefix

log = logging.getLogger(__name__)
PREDICTION_FILES = ("predictions.jsonl", "predictions.csv")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); ValueError for anything else."""
    u = urlparse(uri)
    if u.scheme != "s3" or not u.netloc or not u.path.strip("/"):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return u.netloc, u.path.lstrip("/")


class Artifacts:
    """What training left in S3, and the model cards the registry writes to the ml bucket."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.ml_bucket = clients.settings.topology.bucket("ml")

    async def read(self, uri: str) -> bytes:
        """The bytes of an ``s3://`` object."""
        bucket, key = split_s3(uri)
        s3 = await self.clients.s3()
        obj = await s3.get_object(Bucket=bucket, Key=key)
        async with obj["Body"] as body:
            return await body.read()  # type: ignore[no-any-return]

    async def evaluation(self, uri: str | None) -> dict[str, Any]:
        """``evaluation.json`` ({} without a URI)."""
        return json.loads(await self.read(uri)) if uri else {}

    async def artifact_card(self, artifact_uri: str) -> dict[str, Any]:
        """``model_card.json`` + ``config.json`` from inside ``model.tar.gz`` (code version, hyper-parameters,
        threshold); {} when unreadable, since lineage from the artefact is best-effort (the package is the record)."""
        try:
            members = read_json_members(await self.read(artifact_uri), (CONFIG_FILE, CARD_FILE))
        except Exception as exc:
            log.warning("could not read the model card inside the artefact", extra={"error": str(exc)[:200]})
            return {}
        return {**members.get(CONFIG_FILE, {}), **members.get(CARD_FILE, {})}

    async def manifest_counts(self, manifest_uri: str) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """Labels per class and per split and class, from the run's manifest."""
        records = parse_manifest(await self.read(manifest_uri))
        per_class: dict[str, int] = {"normal": 0, "pneumonia": 0}
        per_split: dict[str, dict[str, int]] = {}
        for r in records:
            per_class[r.label] += 1
            per_split.setdefault(r.split, {"normal": 0, "pneumonia": 0})[r.label] += 1
        return per_class, per_split

    async def predictions(self, evaluation_uri: str | None) -> tuple[list[int], list[float]] | None:
        """Per-case test predictions next to ``evaluation.json`` (``predictions.jsonl`` or ``.csv``), if any."""
        if not evaluation_uri:
            return None
        bucket, key = split_s3(evaluation_uri)
        base = key.rsplit("/", 1)[0]
        s3 = await self.clients.s3()
        for name in PREDICTION_FILES:
            try:
                obj = await s3.get_object(Bucket=bucket, Key=f"{base}/{name}")
                async with obj["Body"] as body:
                    text = (await body.read()).decode()
            except Exception:  # absent (or unreadable): try the other layout, else use the counts
                continue
            found = parse_predictions(name, text)
            if found:
                return found
        return None

    async def write_card(self, run_id: str, version: int, card: dict[str, Any]) -> str:
        """Store the card as JSON and Markdown next to the run's model; returns the JSON's URI."""
        prefix = f"{model_prefix(run_id)}/registry/v{version}"
        s3 = await self.clients.s3()
        await s3.put_object(Bucket=self.ml_bucket, Key=f"{prefix}/model_card.json",
                            Body=json.dumps(card, indent=2, default=str).encode(), ContentType="application/json")
        await s3.put_object(Bucket=self.ml_bucket, Key=f"{prefix}/model_card.md",
                            Body=card_markdown(card).encode(), ContentType="text/markdown")
        return f"s3://{self.ml_bucket}/{prefix}/model_card.json"
