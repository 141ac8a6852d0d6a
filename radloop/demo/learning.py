"""What the demo watches, and never commands, after each round: the orchestrator retrains by itself, the registry
decides on the new model, and the champion pointer follows an approval."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from radloop.demo.api import PlatformApi
from radloop.demo.config import DemoConfig, DemoState
from radloop.demo.ui import wait_until


def wait_for_training(cfg: DemoConfig, state: DemoState, api: PlatformApi, console: Console, r: int,
                      runs_before: int) -> dict[str, Any] | None:
    """Wait until a run triggered after round ``r`` completes and the registry has decided on it."""
    def new_run_done() -> dict[str, Any] | None:
        runs = api.runs()
        if len(runs) <= runs_before:
            return None
        latest = max(runs, key=lambda x: x.get("created_at") or 0)
        if latest.get("status") in ("Succeeded", "Failed", "Stopped"):
            return latest
        return None

    with console.status(f"round {r + 1}: waiting for the orchestrator to retrain (no command sent)"):
        try:
            run = wait_until("a training run", new_run_done, cfg.round_timeout_s, 2.0)
        except TimeoutError as exc:
            state.errors.append(str(exc))
            return None
        if run.get("status") == "Succeeded":
            try:
                model = wait_until("the registry's decision", lambda: next(
                    (m for m in api.models() if m.get("run_id") == run.get("run_id")), None), 120, 1.0)
                if str(model.get("status") or model.get("approval_status")).lower() == "approved":
                    # the champion pointer follows the approval: wait for it, so the next wave uses it
                    wait_until("the new champion", lambda: (api.champion() or {}).get("version") ==
                               model.get("version"), 60, 1.0)
            except TimeoutError as exc:
                state.errors.append(str(exc))
    champ = api.champion()
    console.print(f"round {r + 1}: run {run.get('run_id')} {run.get('status')}; champion "
                  f"{'v' + str(champ.get('version')) if champ else 'none'}")
    return run
