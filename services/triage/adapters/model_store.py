"""The champion model holder: loaded at start-up from the registry's pointer, hot-swapped on ``ModelApproved``.

The pointer is read through :mod:`shared.champion` (the one module that spells it) and the artefact is fetched from
the S3 URI it names; building the model from the bytes is pure (:func:`~services.triage.domain.model.load_model_artifact`).

Swap protocol (no restart, no message dropped or scored twice):

1. the new artefact is downloaded and built in a worker thread while the old model keeps scoring;
2. under ``self._lock`` the reference is replaced; batches read the reference once per batch, so a batch is scored
   wholly by the old or wholly by the new version, and its results say which;
3. messages themselves are never touched by a swap: they stay with the SQS consumer, whose idempotency store runs
   each event at most once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.triage.domain.model import LoadedModel, load_model_artifact
from services.triage.settings import TriageSettings
from shared.aws import AwsClients
from shared.champion import ChampionPointer, read_champion
from shared.storage import parse_s3_uri

log = logging.getLogger(__name__)


class ChampionHolder:
    """The model the service scores with (None until the registry has approved one)."""

    def __init__(self, clients: AwsClients, settings: TriageSettings) -> None:
        self.clients = clients
        self.settings = settings
        self.current: LoadedModel | None = None
        #: set when the pointer names a model that could not be loaded (readiness reports it; scoring retries).
        self.load_error: str | None = None
        self.swaps = 0
        self._lock = asyncio.Lock()
        self._checked = time.monotonic()

    async def read_pointer(self) -> ChampionPointer | None:
        """The registry's champion pointer, or None when no model was ever approved."""
        return await read_champion(await self.clients.dynamodb(), self.settings.topology.table("state"))

    async def _load(self, pointer: ChampionPointer) -> LoadedModel:
        bucket, key = parse_s3_uri(pointer.model_artifact_uri, what="model artefact URI")
        s3 = await self.clients.s3()
        obj = await s3.get_object(Bucket=bucket, Key=key)
        async with obj["Body"] as body:
            data = await body.read()
        s = self.settings
        return await asyncio.to_thread(load_model_artifact, data, version=pointer.version,
                                       threshold=pointer.threshold, precision=s.triage_precision,
                                       batch=s.triage_max_batch, tolerance=s.triage_bf16_tolerance)

    async def ensure_loaded(self) -> LoadedModel | None:
        """Load the pointer's model if it is not the one in memory (start-up, and recovery after a failed load)."""
        pointer = await self.read_pointer()
        if pointer is None:
            return self.current
        return await self.install(pointer)

    async def refresh_if_due(self) -> LoadedModel | None:
        """Install a champion approved while another task took the ``ModelApproved`` event (the queue gives each
        event to one task): at most every ``triage_champion_check_s``, read the pointer. Returns the model when it
        changed, else None; a failed load is left to readiness and the next check."""
        now = time.monotonic()
        if now - self._checked < self.settings.triage_champion_check_s:
            return None
        self._checked = now
        before = self.current
        try:
            model = await self.ensure_loaded()
        except Exception:  # logged by install(); scoring goes on with the model in memory
            return None
        return model if model is not before else None

    async def install(self, pointer: ChampionPointer) -> LoadedModel:
        """Build ``pointer``'s model and make it current (a no-op when that version is already current)."""
        async with self._lock:
            cur = self.current
            if cur is not None and cur.version == pointer.version and abs(cur.threshold - pointer.threshold) < 1e-12:
                return cur
            try:
                model = await self._load(pointer)
            except Exception as exc:
                self.load_error = f"champion v{pointer.version} could not be loaded: {type(exc).__name__}: {exc}"
                log.error("champion load failed", extra={"model_version": pointer.version, "error": self.load_error})
                raise
            self.current = model  # the swap: one reference assignment, taken by the next batch
            self.load_error = None
            self.swaps += 1
            log.info("champion installed", extra={"model_version": model.version,
                                                  "previous_version": cur.version if cur else None})
            return model

    async def on_approved(self, version: int, artifact_uri: str, threshold: float, arn: str) -> LoadedModel:
        """Handle ``ModelApproved``: the state table is the truth (events may arrive out of order)."""
        pointer = await self.read_pointer()
        if pointer is None:
            # The pointer write and the event are not atomic; trust the event when the pointer is not visible yet.
            pointer = ChampionPointer(version=version, model_artifact_uri=artifact_uri, threshold=threshold,
                                      model_package_arn=arn)
        return await self.install(pointer)
