"""``radloop runs``: the orchestrator's training pipeline runs (list, show, trigger, logs) through ``/orchestrator``."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from radloop.ops.client import Api, JsonOpt, OpsError, TokenOpt, UrlOpt, console, print_json, run, show_get

app = typer.Typer(help="Training pipeline runs: list, show, trigger, logs.", no_args_is_help=True)

def _run_id(value: str) -> str:
    """A run id as the orchestrator names runs: letters, digits, ``-`` and ``_`` (a path in it reached another route:
    `runs show ../../registry/models/1` printed a model; found by a review)."""
    if not value or len(value) > 128 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise typer.BadParameter(f"{value[:40]!r} is not a run id (letters, digits, - and _; see `radloop runs list`)")
    return value


RunArg = Annotated[str, typer.Argument(help="The run id (run-YYYYMMDD-HHMMSS-xxxxxx, see `radloop runs list`).",
                                       callback=_run_id)]
#: A run is over in these states; `logs --follow` stops there.
TERMINAL = frozenset({"Succeeded", "Failed", "Stopped"})  # the orchestrator's terminal states


def _render_list(d: dict[str, Any]) -> None:
    t = Table(title=f"training runs (active: {d.get('active_run') or 'none'}, pending: {d.get('pending') or 'no'})")
    for c in ("run", "status", "trigger", "labels", "created", "ended", "champion", "failure"):
        t.add_column(c)
    for r in d.get("runs", []):
        t.add_row(str(r.get("run_id")), str(r.get("status")), str(r.get("trigger") or "-"),
                  str(r.get("label_count") if r.get("label_count") is not None else "-"),
                  str(r.get("created_at") or "-"), str(r.get("ended_at") or "-"),
                  str(r.get("champion_version") or "-"), str(r.get("failure_reason") or ""))
    console.print(t)
    console.print(f"new labels since the last run: {json.dumps(d.get('new_labels'))}; policy: {json.dumps(d.get('policy'))}")


def _render_run(r: dict[str, Any]) -> None:
    console.print(f"[bold]{r.get('run_id')}[/]: {r.get('status')} (trigger {r.get('trigger')}, "
                  f"executor {r.get('executor')})")
    if r.get("failure_reason"):
        console.print(f"[red]failure:[/] {r['failure_reason']}")
    t = Table(title="steps")
    for c in ("step", "status", "started", "ended"):
        t.add_column(c)
    for s in r.get("steps") or []:
        t.add_row(str(s.get("name")), str(s.get("status")), str(s.get("started_at") or "-"), str(s.get("ended_at") or "-"))
    console.print(t)
    if r.get("metrics"):
        console.print(f"metrics: {json.dumps(r['metrics'])}")


@app.command("list")
def list_(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Pipeline runs, newest first, with the trigger state (new labels, policy, active run)."""
    show_get(url, token, "/orchestrator/trainings", as_json, _render_list)


@app.command()
def show(run_id: RunArg, url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One run: parameters, each step's status and timings, metrics."""
    show_get(url, token, f"/orchestrator/trainings/{run_id}", as_json, _render_run)


@app.command()
def trigger(
    reason: Annotated[str, typer.Option(help="Why (kept with the run).")] = "manual trigger from the CLI",
    force: Annotated[bool, typer.Option("--force", help="Re-run even if the labelled data set is unchanged.")] = False,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Override a pipeline parameter, KEY=VALUE (repeatable; VALUE read as JSON if it parses).")] = None,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Start a training run now (role ml); coalesces with a running one. Exit 2 when there is nothing to train on."""
    def go() -> None:
        params: dict[str, Any] = {}
        for p in param or []:
            key, sep, raw = p.partition("=")
            if not sep or not key:
                raise OpsError(f"--param {p!r} is not KEY=VALUE", 2)
            try:
                params[key] = json.loads(raw)
            except ValueError:
                params[key] = raw
        with Api(url, token) as api:
            r = api.post("/orchestrator/trainings", {"reason": reason, "force": force, "parameters": params})
        if as_json:
            print_json(r)
        else:
            console.print(f"{r.get('outcome')}: run {r.get('run_id') or '-'} {r.get('detail') or ''}".rstrip())
    run(go)


def _log_lines(r: dict[str, Any]) -> list[str]:
    out = []
    for s in r.get("steps") or []:
        for line in (s.get("log_tail") or "").splitlines():
            out.append(f"[{s.get('name')}] {line}")
    return out


@app.command()
def logs(
    run_id: RunArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")] = False,
    timeout: Annotated[float, typer.Option(help="With --follow: give up after this many seconds (exit 1).")] = 600.0,
    interval: Annotated[float, typer.Option(min=0.5, max=300.0,
                                            help="With --follow: seconds between polls (0.5 to 300).")] = 2.0,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Each step's log tail (the orchestrator keeps the last lines of each step); --follow polls until the run ends."""
    def go() -> None:
        printed: list[str] = []
        deadline = time.monotonic() + max(timeout, 0.0)
        with Api(url, token) as api:
            while True:  # bounded by the deadline
                r = api.get(f"/orchestrator/trainings/{run_id}")
                lines = _log_lines(r)
                # The tail is a sliding window: print what follows the last line already printed.
                start = 0
                if printed:
                    for i in range(len(lines), 0, -1):
                        if lines[:i] == printed[-i:]:
                            start = i
                            break
                new = lines[start:]
                printed += new
                for line in new:
                    if as_json:
                        print(json.dumps({"run_id": run_id, "line": line}), flush=True)
                    else:
                        console.print(line, markup=False, highlight=False)
                if not follow or r.get("status") in TERMINAL:
                    if as_json and follow:
                        print(json.dumps({"run_id": run_id, "status": r.get("status")}), flush=True)
                    return
                if time.monotonic() >= deadline:
                    raise OpsError(f"run {run_id} is still {r.get('status')} after {timeout:.0f}s (--timeout)", 1)
                time.sleep(min(interval, max(0.05, deadline - time.monotonic())))
    run(go)
