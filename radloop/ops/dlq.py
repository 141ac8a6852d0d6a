"""``radloop dlq``: dead-letter queues (list depths, show messages with their reasons, redrive), through
:mod:`radloop.dlq`. Like ``radloop status`` it talks to SQS directly: the embedded endpoint locally, AWS otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from radloop import dlq as ops_dlq
from radloop.ops.client import JsonOpt, OpsError, console, local_settings, print_json, run

app = typer.Typer(help="Dead-letter queues: list depths, show messages and reasons, redrive them.", no_args_is_help=True)

T = TypeVar("T")
QueueOpt = Annotated[str | None, typer.Option("--queue", "-q", help="A service (e.g. triage) or a queue name; default all.")]
EndpointOpt = Annotated[str | None, typer.Option(
    "--url", envvar="AWS_ENDPOINT_URL", show_default=False,
    help="The AWS endpoint (default: AWS_ENDPOINT_URL, else the embedded one `radloop up` started, else AWS).")]


def _with_clients(endpoint: str | None, fn: Callable[[Any], Awaitable[T]]) -> T:
    from shared.aws import AwsClients

    s = local_settings()
    if s is None:
        raise OpsError("the settings do not load: set RADLOOP_ENVIRONMENT (and RADLOOP_PREFIX for a deployment)", 2)
    if not endpoint:
        try:
            from radloop.local.platform import read_state

            endpoint = s.aws_endpoint_url or str((read_state(s.var_dir) or {}).get("endpoint") or "")
        except ImportError:  # the CLI without the `local` extra talks to AWS
            endpoint = s.aws_endpoint_url
    settings = s.model_copy(update={"aws_endpoint_url": endpoint or ""})

    async def go() -> T:
        async with AwsClients(settings) as clients:
            return await fn(clients)

    try:
        return asyncio.run(go())
    except ValueError as exc:  # an unknown queue name
        raise OpsError(str(exc), 2) from None
    except OpsError:
        raise
    except Exception as exc:  # botocore: endpoint down, queue missing (the endpoint restarted), credentials
        raise OpsError(f"SQS at {endpoint or 'AWS'} failed: {type(exc).__name__}: {exc} (is the platform up? "
                       "see docs/troubleshooting.md)") from None


@app.command("list")
def list_(queue: QueueOpt = None, url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """Each consuming service's queue and DLQ depth (messages waiting plus in flight)."""
    def go() -> None:
        rows = _with_clients(url, lambda c: ops_dlq.depths(c, queue))
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
    """The messages in the DLQ(s) with their event type and dead-letter reason; nothing is removed."""
    def go() -> None:
        msgs = _with_clients(url, lambda c: ops_dlq.show(c, queue, limit))
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
        moved = _with_clients(url, lambda c: ops_dlq.redrive(c, queue, message_id=message_id))
        rows = [m.summary() for m in moved]
        if message_id and not rows:
            raise OpsError(f"message {message_id!r} is not in the DLQ(s) (see `radloop dlq show`)", 2)
        if as_json:
            print_json({"redriven": len(rows), "messages": rows})
        else:
            console.print(f"redrove {len(rows)} message(s)" + "".join(f"\n  {r['queue']} {r['message_id']} "
                                                                       f"{r['detail_type']}" for r in rows))
    run(go)
