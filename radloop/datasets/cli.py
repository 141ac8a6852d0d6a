"""``radloop import-dataset --format rsna-pneumonia|chestxray14|chexpert PATH`` (docs/datasets.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from radloop.datasets.formats import FORMATS, DatasetError, list_dataset
from radloop.datasets.importer import ImportAborted, Importer, Journal, Outcome, Summary
from radloop.ops.client import (
    JsonOpt,
    OpsError,
    TokenOpt,
    UrlOpt,
    console,
    local_settings,
    print_json,
    resolve_token,
    resolve_url,
    run,
)


def default_journal(fmt: str, root: Path) -> Path:
    """``<var_dir>/imports/<format>-<hash of the dataset's absolute path>.jsonl``."""
    s = local_settings()
    var = s.var_dir if s is not None else Path("var")
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return var / "imports" / f"{fmt}-{digest}.jsonl"


def import_dataset(
    path: Annotated[Path, typer.Argument(help="The dataset's folder, as downloaded and unpacked.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="rsna-pneumonia, chestxray14 or chexpert.",
                                     show_default=False)],
    limit: Annotated[int | None, typer.Option(help="Import at most this many images not imported yet.", min=1)] = None,
    concurrency: Annotated[int, typer.Option(help="STOW-RS requests (and label calls) in flight at once.",
                                             min=1, max=32)] = 4,
    uncertain: Annotated[str, typer.Option(help="CheXpert's uncertain (-1.0) Pneumonia: ignore (leave the image "
                                                "out), ones (pneumonia) or zeros (normal).")] = "ignore",
    other: Annotated[str, typer.Option(help="Images with findings other than pneumonia: normal (pneumonia-"
                                            "negative) or skip.")] = "normal",
    views: Annotated[str, typer.Option(help="CheXpert: frontal (the model's views) or all.")] = "frontal",
    split: Annotated[str, typer.Option(help="CheXpert: train, valid or all.")] = "all",
    journal: Annotated[Path | None, typer.Option(help="Resume journal (default under RADLOOP_VAR_DIR/imports/).",
                                                 show_default=False)] = None,
    label_wait: Annotated[float, typer.Option(help="Seconds to wait for a stored image's case to appear.")] = 120.0,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Import a public dataset: images through ingestion, labels as pre-verified ground truth (source = the dataset).

    Resumable: a rerun skips images already imported with the same label. Exits 1 when an image was refused.
    """
    def go() -> None:
        checks = {"--format": (fmt, FORMATS), "--uncertain": (uncertain, ("ignore", "ones", "zeros")),
                  "--other": (other, ("normal", "skip")), "--views": (views, ("frontal", "all")),
                  "--split": (split, ("train", "valid", "all"))}
        for opt, (value, allowed) in checks.items():
            if value not in allowed:
                raise OpsError(f"{opt} {value!r}: expected one of {', '.join(allowed)}", 2)
        try:
            listing = list_dataset(fmt, path, other=other, uncertain=uncertain, views=views,  # type: ignore[arg-type]
                                   split=split)  # type: ignore[arg-type]
        except DatasetError as exc:
            raise OpsError(str(exc), 2) from None
        if not listing.items:
            raise OpsError(f"no labelled image found in {path} (left out: {dict(listing.excluded) or 'none'})", 2)
        summary = Summary(fmt=fmt, candidates=len(listing.items), excluded=listing.excluded)
        try:
            journal_file = Journal(journal or default_journal(fmt, path))
        except OSError as exc:  # a directory, an unwritable place (a traceback before: a review)
            raise OpsError(f"--journal {journal or default_journal(fmt, path)}: {exc.strerror or exc}", 2) from None
        imp = Importer(resolve_url(url), resolve_token(token, role="admin"), fmt, journal_file, concurrency=concurrency,
                       label_wait_s=label_wait)
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, disable=as_json) as progress:
                task = progress.add_task(f"importing {fmt}", total=None)

                def step(_o: Outcome) -> None:
                    progress.update(task, total=summary.attempted)
                    progress.advance(task)

                imp.run(listing.items, summary, step, limit=limit)
        except ImportAborted as exc:
            raise OpsError(str(exc)) from None
        finally:
            imp.close()
        out = summary.as_dict()
        if as_json:
            print_json(out)
        else:
            t = Table(title=f"import-dataset {fmt}: {summary.attempted} image(s) this run in {out['seconds']} s")
            t.add_column("what")
            t.add_column("images", justify="right")
            for k in ("candidates", "already_imported", "stored", "labelled", "unchanged", "conflict", "rejected"):
                t.add_row(k.replace("_", " "), str(out[k]))
            for lab, n in sorted(summary.labels.items()):
                t.add_row(f"  labelled {lab}", str(n))
            for reason, n in sorted(summary.reasons.items()):
                t.add_row(f"  {reason}", str(n))
            for reason, n in sorted(summary.excluded.items()):
                t.add_row(f"  left out: {reason}", str(n))
            console.print(t)
        if summary.outcomes.get("rejected"):
            raise typer.Exit(1)

    run(go)
