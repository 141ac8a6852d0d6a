"""``radloop index backfill``: bring the sparse indexes' key attributes up to date on tables written before they
existed (an in-place upgrade): the instance index, triage's scores and verification's cases, through
:mod:`radloop.index_backfill`. Talks to DynamoDB directly, like ``radloop dlq``.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from radloop import index_backfill
from radloop.ops.client import EndpointOpt, JsonOpt, console, err, print_json, run, with_clients

app = typer.Typer(help="The DynamoDB indexes: backfill the keys of items written before those keys existed.",
                  no_args_is_help=True)

Table = Enum("Table", {t: t for t in index_backfill.TABLES}, type=str)  # type: ignore[misc]


@app.command()
def backfill(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be written; write nothing.")] = False,
    max_writes_per_s: Annotated[float, typer.Option(
        min=0.1, max=10_000, help="Pace of the writes, so a large backfill leaves ingestion its write capacity.")] = 50.0,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Items per Scan page.")] = 200,
    max_items: Annotated[int | None, typer.Option(
        min=1, help="Stop each table after this many items (a trial run on a large table).")] = None,
    table: Annotated[list[Table] | None, typer.Option(  # type: ignore[valid-type]
        "--table", help="Backfill only this table (repeat for several); default: instances, scores and cases.")] = None,
    url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Scan the tables whose items carry sparse-index keys and set the keys where items written by an older version
    lack them or have them out of date:

    - instances: the QIDO search keys of study and series items (level_pk, level_sk, accession_key, modality_key);
    - scores: backlog_pk (images waiting for a first model) and unread_pk (unread images a new champion re-scores);
      an image whose case is final is marked verified instead;
    - cases: outbox_pk, outcome_pk/outcome_sk and pair_pk/pair_sk, through the verification service's own case
      store (which also notes each outcome's model version).

    Safe on live tables and safe to repeat: each write is conditional on the item being unchanged since it was read,
    and items already up to date are not written (a second run reports 0 updated). docs/troubleshooting.md, "Old
    studies missing from searches after an upgrade".
    """
    tables = [t.value for t in table] if table else list(index_backfill.TABLES)
    def go() -> None:
        reports: list[index_backfill.BackfillReport] = []
        with Progress(TextColumn("[progress.description]{task.description}"), TimeElapsedColumn(),
                      console=err, disable=as_json, transient=True) as bar:
            task = bar.add_task("scanning", total=None)

            def progress(r: index_backfill.BackfillReport) -> None:
                bar.update(task, description=f"{r.table}: scanned {r.scanned} items, "
                                             f"{'would update' if r.dry_run else 'updated'} {r.updated}")

            for name in tables:
                async def work(clients: Any, name: str = name) -> index_backfill.BackfillReport:
                    return await index_backfill.BACKFILLS[name](
                        clients, dry_run=dry_run, page_size=page_size, max_writes_per_s=max_writes_per_s,
                        max_items=max_items, progress=progress)

                reports.append(with_clients(url, "DynamoDB", work))
        if as_json:
            print_json({r.table: r.as_dict() for r in reports})
            return
        verb = "would update" if dry_run else "updated"
        for report in reports:
            what = "study and series items" if report.table == "instances" else "items"
            console.print(f"{report.table}: {report.scanned} {what} scanned in {report.seconds} s: "
                          f"{report.up_to_date} up to date, {verb} {report.updated}"
                          + (f", {report.changed_meanwhile} changed meanwhile (their service wrote the keys)"
                             if report.changed_meanwhile else "") + ".")
    run(go)
