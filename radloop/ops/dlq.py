"""``radloop dlq``: dead-letter queues (list depths, show messages with their reasons, redrive), through
:mod:`radloop.dlq`. Like ``radloop status`` it talks to SQS directly: the embedded endpoint locally, AWS otherwise.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from radloop import dlq as ops_dlq
from radloop.ops.client import EndpointOpt, JsonOpt, OpsError, console, print_json, run, with_clients

app = typer.Typer(help="Dead-letter queues: list depths, show messages and reasons, redrive them.", no_args_is_help=True)

QueueOpt = Annotated[str | None, typer.Option("--queue", "-q", help="A service (e.g. triage) or a queue name; default all.")]


@app.command("list")
def list_(queue: QueueOpt = None, url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """Each consuming service's queue and DLQ depth (messages waiting plus in flight)."""
    def go() -> None:
        rows = with_clients(url, "SQS", lambda c: ops_dlq.depths(c, queue))
        if as_json:
            print_json(rows)
            return
        t = Table(title="queues")
        for c in ("service", "queue", "depth", "DLQ", "DLQ depth"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["service"], r["queue"], str(r["queue_depth"]), r["dlq"],
                      f"[red]{r['dlq_depth']}[/]" if r["dlq_depth"] else "0")
        console.print(t)
    run(go)


@app.command()
def show(queue: QueueOpt = None, limit: Annotated[int, typer.Option(min=1, max=ops_dlq.MAX_MESSAGES)] = 50,
         url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """The messages in the DLQ(s) with their event type and dead-letter reason; nothing is removed.

    SQS has no way to look without receiving: each `show` receives the messages and makes them visible again at
    once, so a message's "receives" count grows by one per `show` (the first receives, before it was dead-lettered,
    are the ones that failed)."""
    def go() -> None:
        msgs = with_clients(url, "SQS", lambda c: ops_dlq.show(c, queue, limit))
        rows = [m.summary() for m in msgs]
        if as_json:
            print_json(rows)
            return
        t = Table(title=f"{len(rows)} dead-lettered message(s)")
        for c in ("queue", "message id", "event", "receives", "reason"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["queue"], r["message_id"], r["detail_type"] or "-", str(r["receive_count"]), r["reason"])
        console.print(t)
    run(go)


@app.command()
def redrive(queue: QueueOpt = None,
            message_id: Annotated[str | None, typer.Option("--message-id", help="Only this message (from `dlq show`).")] = None,
            url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """Move DLQ messages back to their source queue (sent first, then deleted: never lost). Fix the cause first."""
    def go() -> None:
        moved = with_clients(url, "SQS", lambda c: ops_dlq.redrive(c, queue, message_id=message_id))
        rows = [m.summary() for m in moved]
        if message_id and not rows:
            raise OpsError(f"message {message_id!r} is not in the DLQ(s) (see `radloop dlq show`)", 2)
        if as_json:
            print_json({"redriven": len(rows), "messages": rows})
        else:
            console.print(f"redrove {len(rows)} message(s)" + "".join(f"\n  {r['queue']} {r['message_id']} "
                                                                       f"{r['detail_type']}" for r in rows))
    run(go)
