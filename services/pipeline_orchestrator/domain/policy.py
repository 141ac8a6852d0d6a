"""The retraining trigger policy, as a pure function of counters, clock and state (unit-testable without AWS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Trigger = Literal["policy", "schedule", "manual", "degraded", "drift"]
CLASSES = ("normal", "pneumonia")


@dataclass(frozen=True)
class TriggerPolicy:
    """N new final labels and M per class since the last snapshot; or a schedule; a cooldown between starts."""

    min_new_labels: int
    min_per_class: int
    schedule_s: float = 0.0
    cooldown_s: float = 0.0

    def labels_due(self, new_per_class: dict[str, int]) -> bool:
        """Whether enough new labels (in total and per class) arrived since the last snapshot."""
        total = sum(new_per_class.get(c, 0) for c in CLASSES)
        return total >= self.min_new_labels and all(new_per_class.get(c, 0) >= self.min_per_class for c in CLASSES)

    def schedule_due(self, now: float, last_snapshot_at: float | None, started_at_boot: float) -> bool:
        """Whether the schedule asks for a run: ``schedule_s`` since the last snapshot (or since start-up)."""
        if self.schedule_s <= 0:
            return False
        return now - (last_snapshot_at or started_at_boot) >= self.schedule_s

    def cooldown_left(self, now: float, last_started_at: float | None, trigger: Trigger) -> float:
        """Seconds until an automatic trigger may start a run (manual triggers never wait)."""
        if trigger == "manual" or last_started_at is None:
            return 0.0
        return max(0.0, last_started_at + self.cooldown_s - now)


def merge_pending(current: str | None, new: Trigger) -> Trigger:
    """Coalesce triggers into one follow-up: a manual request wins, so it keeps its exemption from the cooldown."""
    if current == "manual" or new == "manual":
        return "manual"
    return new if current is None else current  # type: ignore[return-value]
