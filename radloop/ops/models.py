"""``radloop models``: the registry's model versions (list, show) and the decisions on them (approve, reject,
rollback), through ``/registry`` of the entry point."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from radloop.ops.client import Api, JsonOpt, OpsError, TokenOpt, UrlOpt, console, print_json, run, show_get

app = typer.Typer(help="Model versions in the registry: list, show, approve, reject, rollback.", no_args_is_help=True)

VersionArg = Annotated[int, typer.Argument(help="The model version (an integer, see `radloop models list`).")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the approval history; 3+ characters).")]


def _metric(m: dict[str, Any] | None, key: str) -> str:
    v = (m or {}).get(key)
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


def _when(v: Any) -> str:
    """A registry time for a person: the local registry gives epoch seconds, SageMaker's an ISO string."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(v) if v else "-"


def _render_list(d: dict[str, Any]) -> None:
    t = Table(title=f"models (champion: {d.get('champion') or 'none'})")
    for c in ("version", "status", "decision", "AUC", "sensitivity", "specificity", "run", "created"):
        t.add_column(c)
    for m in d.get("models", []):
        champ = " ★" if m.get("version") == d.get("champion") else ""
        metrics = m.get("metrics")
        t.add_row(f"{m.get('version')}{champ}", str(m.get("status")), str(m.get("decision") or "-"),
                  _metric(metrics, "auc"), _metric(metrics, "sensitivity"), _metric(metrics, "specificity"),
                  str(m.get("run_id") or "-"), _when(m.get("created_at")))
    console.print(t)


def _render_model(m: dict[str, Any]) -> None:
    t = Table(title=f"model version {m.get('version')}{' (champion)' if m.get('champion') else ''}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    for k in ("status", "decision", "decision_reason", "run_id", "created_at", "model_package_arn"):
        t.add_row(k, _when(m.get(k)) if k == "created_at" else str(m.get(k) if m.get(k) is not None else "-"))
    for k, v in sorted((m.get("metrics") or {}).items()):
        t.add_row(f"metrics.{k}", f"{v:.4f}" if isinstance(v, float) else str(v))
    # The lineage `show --help` promises (it was in --json only: a review)
    lineage = m.get("lineage") or {}
    for k in ("parent_version", "parent_auc", "manifest_sha256", "label_counts", "split_counts", "code_version",
              "pipeline_execution", "evaluation_uri"):
        if lineage.get(k) is not None:
            v = lineage[k]
            t.add_row(f"lineage.{k}", f"{v:.4f}" if isinstance(v, float) else str(v))
    locked = lineage.get("locked_set") or {}
    if locked:
        t.add_row("lineage.locked_set", f"v{locked.get('version')}: {locked.get('positives')} positives, "
                                        f"{locked.get('negatives')} negatives")
    for h in (m.get("history") or [])[-5:]:
        if isinstance(h, dict):
            t.add_row("history", " ".join(str(h.get(k)) for k in ("at", "action", "by", "reason") if h.get(k)))
    console.print(t)


@app.command("list")
def list_(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every model version with its metrics, decision and status; the champion is starred."""
    show_get(url, token, "/registry/models", as_json, _render_list)


@app.command()
def show(version: VersionArg, url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One version: metrics, lineage (parent, data, locked set), decision and its history, and its SageMaker model
    package ARN."""
    show_get(url, token, f"/registry/models/{version}", as_json, _render_model)


def _decide(action: str, version: int, reason: str, url: str | None, token: str | None, as_json: bool) -> None:
    def go() -> None:
        if len(reason.strip()) < 3:
            raise OpsError("--reason needs at least 3 characters (it is kept in the approval history)", 2)
        with Api(url, token) as api:
            m = api.post(f"/registry/models/{version}/{action}", {"reason": reason})
        if as_json:
            print_json(m)
        else:
            console.print(f"model version {m.get('version')}: {action} recorded "
                          f"(status {m.get('status')}, champion: {'yes' if m.get('champion') else 'no'})")
    run(go)


@app.command()
def approve(version: VersionArg, reason: ReasonOpt, url: UrlOpt = None, token: TokenOpt = None,
            as_json: JsonOpt = False) -> None:
    """Approve a pending version and make it champion (role ml)."""
    _decide("approve", version, reason, url, token, as_json)


@app.command()
def reject(version: VersionArg, reason: ReasonOpt, url: UrlOpt = None, token: TokenOpt = None,
           as_json: JsonOpt = False) -> None:
    """Reject a version; it is never deployed (role ml)."""
    _decide("reject", version, reason, url, token, as_json)


@app.command()
def rollback(version: VersionArg, reason: ReasonOpt, url: UrlOpt = None, token: TokenOpt = None,
             as_json: JsonOpt = False) -> None:
    """Make an earlier approved version champion again (role ml)."""
    _decide("rollback", version, reason, url, token, as_json)

