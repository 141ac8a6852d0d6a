"""DynamoDB state of the orchestrator: the label projection, the single-flight lock with counters, and the runs.

Tables (from :mod:`shared.topology`):

- ``training_labels`` (pk ``sop_uid``): the latest final label per instance. A write is conditional on a newer
  ``label_version``, so redelivered or out-of-order ``ImageVerified`` events never overwrite a newer label and never
  count twice.
- ``state`` item ``orchestrator``: ``active_run`` (the single-flight lock), ``pending`` (the coalesced follow-up
  trigger), the counters of labels new since the last snapshot (``new_normal``, ``new_pneumonia``), and the last
  snapshot (``last_snapshot_sha``/``last_snapshot_at`` of the last run that did not fail) and ``last_started_at``.
- ``runs`` (pk ``run_id``): one item per pipeline execution.

The champion pointer is read through :mod:`shared.champion` (the registry writes it). Conditional writes go through
:func:`shared.ddb.write_if`, whose false condition is :class:`~shared.exceptions.ConditionFailedError`.

Single-flight timeline the conditional write protects::

    trigger A: SET active_run=A IF attribute_not_exists(active_run) ──ok──> snapshot, start, track ... REMOVE active_run
    trigger B:      SET active_run=B IF attribute_not_exists(active_run) ──condition false──> SET pending
    run A ends: REMOVE active_run IF active_run=A; the ticker sees ``pending`` and starts exactly one follow-up.
"""

from __future__ import annotations

import time
from typing import Any

from services.pipeline_orchestrator.domain.policy import CLASSES
from shared import datasets
from shared.aws import AwsClients
from shared.champion import ChampionPointer, read_champion
from shared.ddb import collect, from_item, to_item, to_value, write_if
from shared.events import ImageVerified
from shared.exceptions import ConditionFailedError
from shared.storage import metadata_key

STATE_KEY = "orchestrator"
TERMINAL = ("Succeeded", "Failed", "Stopped")


class OrchestratorStore:
    """All DynamoDB reads and writes of the orchestrator."""

    def __init__(self, clients: AwsClients) -> None:
        topo = clients.settings.topology
        self.clients = clients
        self.labels_table = topo.table("training_labels")
        self.state_table = topo.table("state")
        self.runs_table = topo.table("runs")
        self.images_bucket = topo.bucket("images")

    async def _ddb(self) -> Any:
        return await self.clients.dynamodb()

    # -- label projection ----------------------------------------------------------------------------------------
    async def project_label(self, event: ImageVerified) -> bool:
        """Store the label if it is newer than the stored one; count it as new. Returns whether anything changed."""
        ddb = await self._ddb()
        item = {
            "sop_uid": event.sop_uid,
            "study_uid": event.study_uid,
            "series_uid": event.series_uid,
            "case_id": event.case_id,
            "label": event.label,
            "label_version": event.label_version,
            "resolution": event.resolution,
            "reader": event.reader,
            "patient_pseudo_id": event.patient_pseudo_id,
            "bucket": self.images_bucket,
            "frame_key": event.frame_key,
            "metadata_key": metadata_key(event.study_uid, event.series_uid, event.sop_uid),
            "event_id": event.event_id,
            "updated_at": time.time(),
            **datasets.frame_location(event.model_dump()),
        }
        try:
            await write_if(
                ddb.put_item,
                TableName=self.labels_table,
                Item=to_item(item),
                ConditionExpression="attribute_not_exists(sop_uid) OR label_version < :v",
                ExpressionAttributeValues={":v": {"N": str(event.label_version)}},
            )
        except ConditionFailedError:
            return False
        if event.label in CLASSES:
            await ddb.update_item(
                TableName=self.state_table,
                Key={"key": {"S": STATE_KEY}},
                UpdateExpression="ADD #c :one",
                ExpressionAttributeNames={"#c": f"new_{event.label}"},
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
        return True

    async def all_labels(self) -> list[dict[str, Any]]:
        """Every projected label (the input of a snapshot)."""
        ddb = await self._ddb()
        return await collect(ddb.scan, TableName=self.labels_table, ConsistentRead=True)

    # -- state ---------------------------------------------------------------------------------------------------
    async def state(self) -> dict[str, Any]:
        """The orchestrator's state item (lock, pending trigger, counters, last snapshot)."""
        ddb = await self._ddb()
        resp = await ddb.get_item(TableName=self.state_table, Key={"key": {"S": STATE_KEY}}, ConsistentRead=True)
        return from_item(resp.get("Item")) or {"key": STATE_KEY}

    async def champion(self) -> ChampionPointer | None:
        """The registry's champion pointer, or None before the first approval."""
        return await read_champion(await self._ddb(), self.state_table)

    @staticmethod
    def new_counts(state: dict[str, Any]) -> dict[str, int]:
        return {c: int(state.get(f"new_{c}", 0)) for c in CLASSES}

    async def acquire(self, run_id: str) -> bool:
        """Take the single-flight lock for ``run_id``; False when another run holds it."""
        ddb = await self._ddb()
        try:
            await write_if(
                ddb.update_item,
                TableName=self.state_table,
                Key={"key": {"S": STATE_KEY}},
                UpdateExpression="SET active_run = :r, active_since = :now",
                ConditionExpression="attribute_not_exists(active_run)",
                ExpressionAttributeValues={":r": {"S": run_id}, ":now": to_value(time.time())},
            )
        except ConditionFailedError:
            return False
        return True

    async def release(self, run_id: str, *, snapshot_sha: str | None = None) -> bool:
        """Release the lock if ``run_id`` holds it; record the snapshot of a run that did not fail."""
        ddb = await self._ddb()
        values: dict[str, Any] = {":r": {"S": run_id}}
        update = "REMOVE active_run, active_since"
        if snapshot_sha:
            update += " SET last_snapshot_sha = :sha, last_snapshot_at = :now"
            values.update({":sha": {"S": snapshot_sha}, ":now": to_value(time.time())})
        try:
            await write_if(
                ddb.update_item,
                TableName=self.state_table,
                Key={"key": {"S": STATE_KEY}},
                UpdateExpression=update,
                ConditionExpression="active_run = :r",
                ExpressionAttributeValues=values,
            )
        except ConditionFailedError:
            return False
        return True

    async def mark_started(self, consumed: dict[str, int]) -> None:
        """Start the cooldown and subtract the labels this snapshot consumed (concurrent increments survive)."""
        ddb = await self._ddb()
        names = {f"#{c}": f"new_{c}" for c in CLASSES}
        values = {f":{c}": {"N": str(-consumed.get(c, 0))} for c in CLASSES}
        values[":now"] = to_value(time.time())
        await ddb.update_item(
            TableName=self.state_table,
            Key={"key": {"S": STATE_KEY}},
            UpdateExpression="SET last_started_at = :now ADD " + ", ".join(f"#{c} :{c}" for c in CLASSES),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    async def consume_counts(self, consumed: dict[str, int]) -> None:
        """Subtract counted labels without starting anything (the manifest was unchanged)."""
        ddb = await self._ddb()
        await ddb.update_item(
            TableName=self.state_table,
            Key={"key": {"S": STATE_KEY}},
            UpdateExpression="ADD " + ", ".join(f"#{c} :{c}" for c in CLASSES),
            ExpressionAttributeNames={f"#{c}": f"new_{c}" for c in CLASSES},
            ExpressionAttributeValues={f":{c}": {"N": str(-consumed.get(c, 0))} for c in CLASSES},
        )

    async def set_pending(self, trigger: str) -> None:
        ddb = await self._ddb()
        await ddb.update_item(
            TableName=self.state_table,
            Key={"key": {"S": STATE_KEY}},
            UpdateExpression="SET pending = :t",
            ExpressionAttributeValues={":t": {"S": trigger}},
        )

    async def take_pending(self, trigger: str) -> bool:
        """Clear the pending follow-up if it is still ``trigger``; True for exactly one caller."""
        ddb = await self._ddb()
        try:
            await write_if(
                ddb.update_item,
                TableName=self.state_table,
                Key={"key": {"S": STATE_KEY}},
                UpdateExpression="REMOVE pending",
                ConditionExpression="pending = :t",
                ExpressionAttributeValues={":t": {"S": trigger}},
            )
        except ConditionFailedError:
            return False
        return True

    # -- runs ----------------------------------------------------------------------------------------------------
    async def put_run(self, run: dict[str, Any]) -> None:
        """Create a run item (never overwrites one: a run id is written once)."""
        ddb = await self._ddb()
        await write_if(
            ddb.put_item, TableName=self.runs_table, Item=to_item(run), ConditionExpression="attribute_not_exists(run_id)"
        )

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        ddb = await self._ddb()
        resp = await ddb.get_item(TableName=self.runs_table, Key={"run_id": {"S": run_id}}, ConsistentRead=True)
        return from_item(resp.get("Item"))

    async def list_runs(self) -> list[dict[str, Any]]:
        """Every run, newest first."""
        ddb = await self._ddb()
        runs = await collect(ddb.scan, TableName=self.runs_table, ConsistentRead=True)
        return sorted(runs, key=lambda r: r.get("created_at", 0), reverse=True)

    async def update_run(self, run_id: str, fields: dict[str, Any], *, only_if_status: str | None = None) -> bool:
        """Set fields on a run; with ``only_if_status`` the write happens only from that status (True if it did)."""
        ddb = await self._ddb()
        fields = {k: v for k, v in fields.items() if v is not None}
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": to_value(v) for i, v in enumerate(fields.values())}
        kw: dict[str, Any] = {}
        if only_if_status:
            kw["ConditionExpression"] = "#status_ = :status_"
            names["#status_"] = "status"
            values[":status_"] = {"S": only_if_status}
        try:
            await write_if(
                ddb.update_item,
                TableName=self.runs_table,
                Key={"run_id": {"S": run_id}},
                UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                **kw,
            )
        except ConditionFailedError:
            return False  # only a conditional write (``only_if_status``) can find its condition false
        return True
