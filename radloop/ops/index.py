"""``radloop index backfill``: bring the instance index's key attributes up to date on a table written before they
existed (an in-place upgrade), through :mod:`radloop.index_backfill`. Talks to DynamoDB directly, like ``radloop dlq``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from radloop import index_backfill
from radloop.ops.client import EndpointOpt, JsonOpt, console, err, print_json, run, with_clients

app = typer.Typer(help="The instance index: backfill the search keys of items written before they existed.",
                  no_args_is_help=True)


@app.command()
def backfill(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be written; write nothing.")] = False,
    max_writes_per_s: Annotated[float, typer.Option(
        min=0.1, max=10_000, help="Pace of the writes, so a large backfill leaves ingestion its write capacity.")] = 50.0,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Items per Scan page.")] = 200,
    max_items: Annotated[int | None, typer.Option(
        min=1, help="Stop after this many study and series items (a trial run on a large table).")] = None,
    url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Scan the instances table's study and series items and set the keys the QIDO search indexes need
    (level_pk, level_sk, accession_key, modality_key) where they are missing or out of date.

    Safe on a live table and safe to repeat: each write is conditional on the item being unchanged since it was read,
    and items already up to date are not written (a second run reports 0 updated). docs/operations.md, "Upgrading
    an existing deployment".
    """
    def go() -> None:
        with Progress(TextColumn("[progress.description]{task.description}"), TimeElapsedColumn(),
                      console=err, disable=as_json, transient=True) as bar:
            task = bar.add_task("scanning", total=None)

            def progress(r: index_backfill.BackfillReport) -> None:
                bar.update(task, description=f"scanned {r.scanned} study/series items, "
                                             f"{'would update' if r.dry_run else 'updated'} {r.updated}")

            async def work(clients: Any) -> index_backfill.BackfillReport:
                return await index_backfill.backfill(clients, dry_run=dry_run, page_size=page_size,
                                                     max_writes_per_s=max_writes_per_s, max_items=max_items,
                                                     progress=progress)

            report = with_clients(url, "DynamoDB", work)
        if as_json:
            print_json(report.as_dict())
            return
        verb = "would update" if dry_run else "updated"
        console.print(f"{report.scanned} study and series items scanned in {report.seconds} s: {report.up_to_date} "
                      f"up to date, {verb} {report.updated}"
                      + (f", {report.changed_meanwhile} changed meanwhile (ingestion wrote their keys)"
                         if report.changed_meanwhile else "") + ".")
    run(go)
