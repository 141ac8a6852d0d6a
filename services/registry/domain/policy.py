"""The approval policy, loaded from data (JSON), applied as a pure function."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Decision = Literal["approved", "pending"]


@dataclass(frozen=True)
class ApprovalPolicy:
    name: str
    auc_margin: float
    auc_floor: float
    sensitivity_floor: float

    @classmethod
    def load(cls, path: Path, **overrides: float | None) -> ApprovalPolicy:
        """Read the policy file; non-None ``overrides`` (auc_margin, auc_floor, sensitivity_floor) replace values."""
        try:
            raw: dict[str, Any] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"approval policy file {str(path)!r} is not readable JSON: {exc}") from None
        for k, v in overrides.items():
            if v is not None:
                raw[k] = v
        try:
            policy = cls(
                name=str(raw.get("name", Path(path).stem)),
                auc_margin=float(raw["auc_margin"]),
                auc_floor=float(raw["auc_floor"]),
                sensitivity_floor=float(raw["sensitivity_floor"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"approval policy {str(path)!r} needs numeric auc_margin, auc_floor and sensitivity_floor: {exc}"
            ) from None
        for k in ("auc_margin", "auc_floor", "sensitivity_floor"):
            if not 0.0 <= getattr(policy, k) <= 1.0:
                raise ValueError(f"approval policy {k}={getattr(policy, k)} must lie between 0 and 1")
        return policy

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "auc_margin": self.auc_margin, "auc_floor": self.auc_floor,
                "sensitivity_floor": self.sensitivity_floor}

    def decide(self, auc: float | None, sensitivity: float | None, champion_auc: float | None) -> tuple[Decision, str]:
        """``approved`` iff AUC >= champion + margin (no champion: no such condition), AUC >= floor and
        sensitivity >= floor; otherwise ``pending`` with every unmet condition named."""
        if auc is None or sensitivity is None:
            return "pending", "the evaluation has no AUC or sensitivity, so it cannot be approved automatically"
        failed = []
        if champion_auc is not None and auc < champion_auc + self.auc_margin:
            failed.append(f"AUC {auc:.4f} < champion AUC {champion_auc:.4f} + margin {self.auc_margin:.4f}")
        if auc < self.auc_floor:
            failed.append(f"AUC {auc:.4f} < floor {self.auc_floor:.4f}")
        if sensitivity < self.sensitivity_floor:
            failed.append(f"sensitivity {sensitivity:.4f} < floor {self.sensitivity_floor:.4f}")
        if failed:
            return "pending", f"policy {self.name}: " + "; ".join(failed)
        vs = "no champion"
        if champion_auc is not None:
            vs = f"champion AUC {champion_auc:.4f} + margin {self.auc_margin:.4f}"
        return "approved", (
            f"policy {self.name}: AUC {auc:.4f} >= {vs}, >= floor {self.auc_floor:.4f}; "
            f"sensitivity {sensitivity:.4f} >= floor {self.sensitivity_floor:.4f}"
        )
