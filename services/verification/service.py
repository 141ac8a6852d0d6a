"""The verification use cases, over the case store: events in, worklist, claims, reads, outbox, monitoring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from services.verification.adapters.alarms import DegradationAlarms
from services.verification.adapters.cases import CaseStore, decode_cursor, encode_cursor
from services.verification.adapters.images import HeatmapLinks
from services.verification.domain import performance as perf
from services.verification.domain.cases import (
    FINAL,
    OPEN,
    ReadOutcome,
    ReadRejected,
    apply_read,
    apply_scored,
    apply_stored,
    lease_holder,
    may_amend,
)
from services.verification.domain.errors import CaseConflict, CaseNotFound, InvalidQuery, InvalidRead
from services.verification.domain.imported import apply_imported
from services.verification.settings import VerificationSettings
from shared.aws import AwsClients
from shared.dicom.sop_classes import DERIVED_MODALITIES
from shared.events import ImageVerified, InstanceScored, InstanceStored, ModelPerformanceDegraded
from shared.exceptions import IdempotencyInProgressError, IdempotencyPayloadMismatchError
from shared.idempotency import IdempotencyStore
from shared.metrics import instrument
from shared.publisher import EventPublisher
from shared.uids import validate_uid

log = logging.getLogger(__name__)


class Verification:
    """Cases, reads and live performance (wired in ``bootstrap.py``)."""

    def __init__(self, clients: AwsClients, settings: VerificationSettings, publisher: EventPublisher,
                 idempotency: IdempotencyStore | None = None) -> None:
        self.clients = clients
        self.settings = settings
        self.publisher = publisher
        self.idempotency = idempotency
        self.store = CaseStore(clients)
        self.alarms = DegradationAlarms(clients)
        self.heatmaps = HeatmapLinks(clients, settings.verification_heatmap_url_ttl_s)
        self._checks: dict[int, asyncio.Task[Any]] = {}
        self._check_again: set[int] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    # -- events --------------------------------------------------------------------------------------------------
    async def on_stored(self, e: InstanceStored) -> dict[str, Any]:
        """Create (or complete) the case of a stored instance; a redelivery changes nothing."""
        if e.modality.upper() in DERIVED_MODALITIES:  # AI results and reports (docs/interop.md) are not images to read
            return {"case_id": None, "result": "derived object, not read"}
        mode = self.settings.verification_read_mode

        def change(c: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Any]:
            if c and c.get("stored"):
                return None, [], "already stored"
            return apply_stored(c, e, mode=mode), [], "created"

        _, result = await self.store.mutate(e.sop_uid, change)
        return {"case_id": e.sop_uid, "result": result}

    async def on_scored(self, e: InstanceScored) -> dict[str, Any]:
        """Attach the AI score to the case (an older score than the one held is ignored)."""
        def change(c: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Any]:
            new = apply_scored(c, e)
            return new, [], "applied" if new else "older than the score held"

        _, result = await self.store.mutate(e.sop_uid, change)
        return {"case_id": e.sop_uid, "result": result}

    # -- worklist ------------------------------------------------------------------------------------------------
    async def worklist(self, partition: str, keep: Callable[[dict[str, Any]], bool], *, limit: int,
                       cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the worklist partition ``partition`` (cases passing ``keep``) and the cursor of the next.

        Raises :class:`InvalidQuery` for a cursor this worklist did not return, or one of another partition.
        """
        try:
            start = decode_cursor(cursor) if cursor else None
        except ValueError as exc:
            raise InvalidQuery(str(exc)) from None
        if start and start["status"]["S"] != partition:
            raise InvalidQuery("cursor belongs to another status filter")
        cases, next_key = await self.store.worklist_page(partition, start=start, keep=keep, limit=limit)
        return cases, encode_cursor(next_key)

    async def my_reads(self, reader: str, *, limit: int, max_scanned: int = 5000) -> list[dict[str, Any]]:
        """The final cases whose label ``reader`` may amend (:func:`~services.verification.domain.cases.may_amend`),
        newest label first, at most ``limit``; reads at most ``max_scanned`` cases of the final partition."""
        cases, _ = await self.store.worklist_page(FINAL, start=None, keep=lambda c: may_amend(c, reader),
                                                  limit=max_scanned, max_scanned=max_scanned)
        cases.sort(key=lambda c: str((c.get("final") or {}).get("at", "")), reverse=True)
        return cases[:limit]

    # -- claims --------------------------------------------------------------------------------------------------
    @staticmethod
    def case_id(case_id: str) -> str:
        """The validated case id (a SOP Instance UID); a malformed one names no case (:class:`CaseNotFound`)."""
        try:
            return validate_uid(case_id, what="case id (SOP Instance UID)")
        except ValueError as exc:
            raise CaseNotFound(f"no such case: {exc}") from None

    async def existing(self, case_id: str) -> dict[str, Any]:
        """The stored case, or :class:`CaseNotFound`."""
        c = await self.store.get(case_id)
        if not c or not c.get("stored"):
            raise CaseNotFound(f"case {case_id!r} does not exist (no stored instance has that SOP Instance UID)")
        return c

    async def claim(self, case_id: str, reader: str, *, renew: bool = False) -> dict[str, Any]:
        """Lease the case to ``reader`` (renewing their own lease); :class:`CaseConflict` when another holds it.

        With ``renew``, only an existing lease of ``reader``'s is extended: a renewal that reaches the service after
        the reader released the case (its request was in flight when the reader left) must not claim it again, or
        the case stays held by someone who has gone."""
        await self.existing(case_id)
        lease_s = self.settings.verification_lease_s

        def change(c: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Any]:
            assert c is not None
            now = time.time()
            final = c.get("final") or {}
            if c.get("status") == FINAL and reader not in [*final.get("readers", []), final.get("decided_by")]:
                raise CaseConflict(f"case {case_id} is final; only its reader(s) may claim it to amend")
            holder = lease_holder(c, now)
            if holder is not None and holder != reader:
                raise CaseConflict(f"case {case_id} is claimed by another reader until its lease expires")
            if renew and holder is None:
                raise CaseConflict(f"your claim on case {case_id} has ended (released or expired); claim it again")
            new = dict(c, lease_owner=reader, lease_expires_at=now + lease_s)
            return new, [], None

        new, _ = await self.store.mutate(case_id, change)
        assert new is not None
        return {"case_id": case_id, "lease_owner": reader, "lease_expires_at": new["lease_expires_at"],
                "lease_s": lease_s}

    async def release(self, case_id: str, reader: str) -> None:
        """End ``reader``'s lease (a no-op when nobody holds it); :class:`CaseConflict` when another holds it."""
        await self.existing(case_id)

        def change(c: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Any]:
            assert c is not None
            holder = lease_holder(c, time.time())
            if holder is None:
                return None, [], None
            if holder != reader:
                raise CaseConflict(f"case {case_id} is claimed by another reader; only they can release it")
            new = {k: v for k, v in c.items() if k not in ("lease_owner", "lease_expires_at")}
            return new, [], None

        await self.store.mutate(case_id, change)

    # -- reads ---------------------------------------------------------------------------------------------------
    async def read(self, case_id: str, reader: str, label: str, confidence: float | None,
                   comment: str | None) -> dict[str, Any]:
        """Record a read; when it makes a label final, publish ImageVerified (through the case's outbox)."""
        return await self._decide(case_id, lambda c: apply_read(c, reader, label, confidence, comment, now=time.time()))

    async def import_label(self, case_id: str, source: str, label: str) -> dict[str, Any]:
        """Record a public dataset's label as the case's final, pre-verified label (``radloop import-dataset``).

        The same path as a read (rows, outbox, ImageVerified, performance check), with reader ``dataset:<source>``
        and resolution ``imported``; see :mod:`services.verification.domain.imported`.
        """
        return await self._decide(case_id, lambda c: apply_imported(c, source, label, now=time.time()))

    async def _decide(self, case_id: str, apply: Callable[[dict[str, Any]], ReadOutcome]) -> dict[str, Any]:
        """Apply a read-like transition to a stored case atomically, then publish the ImageVerified it produced."""
        await self.existing(case_id)

        def change(c: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Any]:
            assert c is not None
            try:
                out = apply(c)
            except ReadRejected as exc:
                raise (CaseConflict(exc.reason) if exc.status == 409 else InvalidRead(exc.reason)) from None
            if not out.appends:
                return None, [], out  # nothing to record (an import of the label already final)
            new = out.case
            if out.events:
                new["outbox"] = list(c.get("outbox") or []) + [ev.model_dump_json() for ev in out.events]
                new.setdefault("outbox_since", time.time())
            return new, out.appends, out

        new, out = await self.store.mutate(case_id, change)
        if out.events:
            await self.flush_outbox(case_id)
            mv = out.events[-1].model_version
            if mv is not None:
                self.schedule_check(int(mv))
        return out.response

    async def read_once(self, case_id: str, reader: str, label: str, confidence: float | None, comment: str | None,
                        idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """:meth:`read`, run at most once per (reader, ``idempotency_key``): (its answer, whether it was replayed)."""
        if not idempotency_key or self.idempotency is None:
            return await self.read(case_id, reader, label, confidence, comment), False

        async def run() -> dict[str, Any]:
            return await self.read(case_id, reader, label, confidence, comment)

        payload = {"case_id": case_id, "label": label, "confidence": confidence, "comment": comment}
        try:
            out, ran = await self.idempotency.run(f"verification:read:{reader}:{idempotency_key}", payload, run)
        except IdempotencyPayloadMismatchError:
            raise InvalidRead(f"Idempotency-Key {idempotency_key!r} was already used for a different read") from None
        except IdempotencyInProgressError:
            raise CaseConflict(f"a read with Idempotency-Key {idempotency_key!r} is still being processed") from None
        return out, not ran

    async def history(self, case_id: str) -> list[dict[str, Any]]:
        """The reads and label versions of a case, oldest first."""
        return await self.store.history(case_id)

    async def heatmap_url(self, key: str | None) -> str | None:
        """A short-lived URL of a heatmap (None without one)."""
        return await self.heatmaps.url(key) if key else None

    async def flush_outbox(self, case_id: str) -> int:
        """Publish a case's pending ImageVerified events, then remove them from the outbox. Returns how many."""
        # One flush at a time in this process (reads arrive at human pace), so a sweep never re-sends what a request
        # is sending; across processes the sweeper's grace period and deterministic event ids cover it.
        async with self._flush_lock:
            return await self._flush(case_id)

    async def _flush(self, case_id: str) -> int:
        c = await self.store.get(case_id)
        pending = list((c or {}).get("outbox") or [])
        if not pending:
            return 0
        events = [ImageVerified.model_validate_json(p) for p in pending]
        try:
            await self.publisher.publish_many(events)
        except Exception:
            log.exception("ImageVerified publish failed; left in the outbox for the sweeper",
                          extra={"case_id": case_id, "pending": len(events)})
            return 0
        sent = {e.event_id for e in events}

        def change(cur: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Any]:
            assert cur is not None
            left = [p for p in cur.get("outbox") or [] if ImageVerified.model_validate_json(p).event_id not in sent]
            new = (dict(cur, outbox=left) if left else
                   {k: v for k, v in cur.items() if k not in ("outbox", "outbox_since")})
            return new, [], None

        await self.store.mutate(case_id, change)
        return len(events)

    async def sweep_outbox(self) -> int:
        """Publish every outbox left behind by a failed publish (run periodically)."""
        # Only outboxes older than the grace period: a younger one belongs to a request that is publishing it now.
        # The sparse by_outbox index holds only cases with pending events: the sweep's cost is theirs, not the table's.
        grace = max(10.0, 2 * self.settings.verification_outbox_sweep_s)
        n = 0
        for c in await self.store.pending_outboxes(time.time() - grace):
            n += await self.flush_outbox(c["case_id"])
        return n

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.verification_outbox_sweep_s)
            try:
                await self.sweep_outbox()
            except Exception:
                log.exception("outbox sweep failed")
            try:
                await self.worklist_depth()
            except Exception:  # a missed reading is a gap in a graph
                log.debug("worklist depth failed", exc_info=True)

    async def worklist_depth(self, max_scanned: int = 10_000) -> dict[str, int]:
        """Open cases by priority (``urgent``/``routine``), also set as ``radloop.verification.worklist.depth``.

        Reads the open partition of the status index (bounded by ``max_scanned``); cases without a score yet count
        as routine, as the worklist orders them.
        """
        cases, _ = await self.store.worklist_page(OPEN, start=None, keep=lambda c: True, limit=max_scanned,
                                                  max_scanned=max_scanned)
        counts = {"urgent": 0, "routine": 0}
        for c in cases:
            counts["urgent" if (c.get("score") or {}).get("priority") == "urgent" else "routine"] += 1
        for priority, n in counts.items():
            instrument("radloop.verification.worklist.depth").set(n, {"priority": priority})
        return counts

    def start(self) -> None:
        """Start the outbox sweeper."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="verification-outbox")

    async def stop(self) -> None:
        """Cancel the sweeper and the performance checks in flight."""
        tasks = [t for t in [self._sweeper, *self._checks.values()] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- performance ---------------------------------------------------------------------------------------------
    async def performance(self, model_version: int | None = None) -> dict[str, Any]:
        """Rolling metrics per model version (or one), reader agreement, and any floor breached.

        Reads only the window: the ``verification_window`` most recent outcomes of each version and of double
        reads, kept per version by the case store's sparse indexes as cases are written (never a scan of the cases).
        """
        s = self.settings
        versions = [model_version] if model_version is not None else await self.store.outcome_versions()
        window = s.verification_window if s.verification_window > 0 else 100_000
        outcome_cases = await asyncio.gather(*(self.store.outcomes(v, window) for v in versions))
        by_version: dict[int, list[perf.Outcome]] = defaultdict(list)
        for cases in outcome_cases:
            for c in cases:
                o = perf.outcome_of(c)
                if o is not None:
                    by_version[o.model_version].append(o)
        out = []
        for v in versions:
            m = perf.metrics(by_version.get(v, []), s.verification_window)
            br = perf.breaches(m, min_sample=s.verification_min_sample, auc_floor=s.verification_auc_floor,
                               sensitivity_floor=s.verification_sensitivity_floor)
            for measure in ("auc", "sensitivity", "specificity"):  # live figures per version, for the dashboards
                if m.get(measure) is not None:
                    instrument("radloop.model.performance.ratio").set(
                        float(m[measure]), {"model_version": str(v), "measure": measure})
            out.append({"model_version": v, **m,
                        "degraded": [{"metric": k, "value": val, "floor": f} for k, val, f in br]})
        pairs = [(c["paired_reads"][0], c["paired_reads"][1]) for c in await self.store.paired(window)
                 if len(c.get("paired_reads") or []) == 2]
        return {
            "window": s.verification_window,
            "min_sample": s.verification_min_sample,
            "floors": {"auc": s.verification_auc_floor, "sensitivity": s.verification_sensitivity_floor},
            "read_mode": s.verification_read_mode,
            "versions": out,
            "reader_agreement": perf.cohen_kappa(pairs),
        }

    async def check_degradation(self, model_version: int) -> list[str]:
        """Publish ModelPerformanceDegraded once per breach episode; a recovery re-arms the alarm."""
        report = await self.performance(model_version)
        v = report["versions"][0]
        breached = {d["metric"]: d for d in v["degraded"]}
        published = []
        for metric in ("auc", "sensitivity"):
            if metric in breached:
                d = breached[metric]
                episode = await self.alarms.raise_once(model_version, metric, float(d["value"]))
                if episode is None:
                    continue  # raised and published already in this episode (or being published elsewhere)
                # The event id names the episode: a re-publication after a crash is the same event to its consumers.
                await self.publisher.publish(ModelPerformanceDegraded(
                    event_id=f"degraded-{model_version}-{metric}-{episode}"[:128],
                    model_version=model_version, metric=metric, value=float(d["value"]), floor=float(d["floor"]),
                    sample_size=int(v["sample_size"])))
                await self.alarms.published(model_version, metric)
                log.warning("model performance degraded", extra={"model_version": model_version, "metric": metric,
                                                                 "value": d["value"], "floor": d["floor"]})
                published.append(metric)
            elif v["sample_size"] >= self.settings.verification_min_sample:
                await self.alarms.clear(model_version, metric)
        return published

    def schedule_check(self, model_version: int) -> None:
        """Check a version's performance in the background (at most one check per version runs at a time)."""
        task = self._checks.get(model_version)
        if task is not None and not task.done():
            self._check_again.add(model_version)
            return

        async def run() -> None:
            while True:
                self._check_again.discard(model_version)
                try:
                    await self.check_degradation(model_version)
                except Exception:
                    log.exception("performance check failed", extra={"model_version": model_version})
                if model_version not in self._check_again:
                    return
                # reads that arrived during the check are covered by one more check, after a pause (debounce)
                await asyncio.sleep(self.settings.verification_check_interval_s)

        self._checks[model_version] = asyncio.create_task(run())
