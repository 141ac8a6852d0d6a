"""``radloop worklist``: how much is waiting for radiologists, by priority, and since when (``/verification``)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from radloop.ops.client import Api, JsonOpt, OpsError, TokenOpt, UrlOpt, console, print_json, run

#: Pages walked at most (200 cases each): the summary says when it stopped early.
MAX_PAGES = 50


def _age_s(arrived: Any, now: float) -> float | None:
    if not arrived:
        return None
    try:
        ts = datetime.fromisoformat(str(arrived).replace("Z", "+00:00")).timestamp()
    except ValueError:
        try:
            ts = float(arrived)
        except (TypeError, ValueError):
            return None
    return max(0.0, now - ts)


def summarize(items: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """Counts by priority and by status, and the oldest waiting case of each priority (age in seconds)."""
    by_priority: dict[str, dict[str, Any]] = {}
    by_status: dict[str, int] = {}
    for c in items:
        prio = str((c.get("ai") or {}).get("priority") or "routine")
        row = by_priority.setdefault(prio, {"count": 0, "oldest_waiting_s": None, "oldest_case_id": None})
        row["count"] += 1
        by_status[str(c.get("status"))] = by_status.get(str(c.get("status")), 0) + 1
        age = _age_s(c.get("arrived_at"), now)
        if age is not None and (row["oldest_waiting_s"] is None or age > row["oldest_waiting_s"]):
            row["oldest_waiting_s"], row["oldest_case_id"] = round(age, 1), c.get("case_id")
    ages = [r["oldest_waiting_s"] for r in by_priority.values() if r["oldest_waiting_s"] is not None]
    return {"total": len(items), "by_priority": by_priority, "by_status": by_status,
            "oldest_waiting_s": max(ages) if ages else None}


def _fmt_age(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def worklist(
    status: Annotated[str | None, typer.Option(help="unread | in_progress | adjudication (default: every open case).")] = None,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Cases waiting for a read: counts by priority and by status, and the oldest waiting case of each priority."""
    def go() -> None:
        if status not in (None, "unread", "in_progress", "adjudication"):
            raise OpsError(f"--status {status!r}: expected unread, in_progress or adjudication", 2)
        items: list[dict[str, Any]] = []
        cursor = None
        complete = False
        with Api(url, token) as api:
            for _ in range(MAX_PAGES):
                params: dict[str, Any] = {"limit": 200}
                if status:
                    params["status"] = status
                if cursor:
                    params["cursor"] = cursor
                page = api.get("/verification/worklist", params=params)
                items += page.get("items", [])
                cursor = page.get("next_cursor")
                if not cursor:
                    complete = True
                    break
        out = summarize(items, time.time())
        out["complete"] = complete
        if as_json:
            print_json(out)
            return
        t = Table(title=f"worklist: {out['total']} open case(s){'' if complete else ' (first pages only)'}")
        for c in ("priority", "cases", "oldest waiting", "oldest case"):
            t.add_column(c)
        for prio, row in sorted(out["by_priority"].items()):
            t.add_row(prio, str(row["count"]), _fmt_age(row["oldest_waiting_s"]), str(row["oldest_case_id"] or "-"))
        console.print(t)
        console.print("by status: " + (", ".join(f"{k} {v}" for k, v in sorted(out["by_status"].items())) or "none"))
    run(go)
