"""``radloop``: run the platform on one machine, inspect it, and mint development tokens.

Every command reads the same settings as the services (``RADLOOP_*`` variables; see docs/architecture.md).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from radloop.datasets.cli import import_dataset
from radloop.ops import config as ops_config
from radloop.ops import dlq as ops_dlq
from radloop.ops import index as ops_index
from radloop.ops import models as ops_models
from radloop.ops import runs as ops_runs
from radloop.ops import send as ops_send
from radloop.ops import worklist as ops_worklist
from radloop.ops.client import OpsError, TokenOpt, UrlOpt, fail, resolve_token, resolve_url
from radloop.status import collect_status
from radloop.traces import build_trace_trees, render_trace
from shared.log_filters import setup_cli_logging
from shared.settings import DEFAULT_PORTS, Settings

app = typer.Typer(
    help=(
        "radloop: rapid remote triage of medical images and continuous model improvement.\n\n"
        "Quick start: `radloop up` starts everything on this machine (an embedded AWS endpoint and every service); "
        "`radloop status` shows their health; `radloop token --role viewer` mints a token for the APIs."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err = Console(stderr=True)


@app.callback()
def _logging() -> None:
    # Library warnings that quote the values they read (a patient ID where a UID belongs) never reach the terminal.
    setup_cli_logging()


# The operator's commands live in radloop/ops/ (one module per group); this file only registers them.
app.add_typer(ops_models.app, name="models")
app.add_typer(ops_runs.app, name="runs")
app.add_typer(ops_dlq.app, name="dlq")
app.add_typer(ops_index.app, name="index")
app.command("send")(ops_send.send)
app.command("worklist")(ops_worklist.worklist)
app.command("config")(ops_config.config)
app.command("import-dataset")(import_dataset)


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValueError as exc:
        err.print(f"[red]invalid settings:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def aws(
    port: Annotated[int, typer.Option(help="Port of the embedded endpoint on 127.0.0.1.")] = DEFAULT_PORTS["aws"],
) -> None:
    """Start the embedded AWS endpoint (moto server) and create the topology. Ctrl-C stops it."""
    import asyncio

    from radloop.local.embedded_aws import start_embedded_aws
    from radloop.local.platform import _bootstrap

    s = _settings()
    try:
        emb = start_embedded_aws(port)
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    with emb:
        asyncio.run(_bootstrap(s.model_copy(update={"aws_endpoint_url": emb.endpoint})))
        console.print(f"embedded AWS endpoint: [bold]{emb.endpoint}[/] (prefix {s.prefix!r}), topology created")
        console.print(f"use it with: export AWS_ENDPOINT_URL={emb.endpoint}")
        _wait_for_signal(lambda: emb.process.poll() is None)


def _wait_for_signal(alive: Any, tick: Any = None) -> None:
    stop = {"flag": False}

    def handler(signum: int, frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop["flag"] and alive():
        if tick:
            tick()
        time.sleep(0.5)


@app.command()
def up(
    wait: Annotated[float, typer.Option(help="Seconds to wait for every service to become ready.")] = 120.0,
) -> None:
    """Start the embedded AWS endpoint (unless AWS_ENDPOINT_URL is set) and every service, then supervise them.

    Each service runs as its own process on its own port; the entry point on :8080 routes by path like the ALB
    (/dicomweb, /viewer, /verification, /registry, /orchestrator). A crashed service is restarted and reported.
    Ctrl-C stops everything.
    """
    from radloop.local.platform import LocalPlatform

    s = _settings()
    platform = LocalPlatform(settings=s)
    try:
        with console.status("starting radloop") as st:
            platform.start(progress=lambda m: st.update(m))
            st.update("waiting for every service to be ready")
            platform.wait_healthy(wait)
    except RuntimeError as exc:
        err.print(f"[red]radloop did not start:[/] {exc}")
        platform.stop()
        raise typer.Exit(1) from None
    _print_urls(platform)
    console.print("supervising; Ctrl-C stops everything")

    def tick() -> None:
        for name in platform.supervise_once():
            err.print(f"[yellow]{name} exited; restarted (restart #{platform.processes[name].restarts})[/]")

    try:
        _wait_for_signal(lambda: True, tick)
    finally:
        console.print("stopping…")
        platform.stop()
        console.print("stopped")


def _print_urls(platform: Any) -> None:
    t = Table(title="radloop is up")
    t.add_column("what")
    t.add_column("where")
    t.add_row("DICOMweb (STOW, QIDO, WADO)", f"{platform.entry_url}/dicomweb")
    t.add_row("viewer", f"{platform.entry_url}/viewer")
    t.add_row("verification API", f"{platform.entry_url}/verification")
    t.add_row("registry API", f"{platform.entry_url}/registry")
    t.add_row("orchestrator API", f"{platform.entry_url}/orchestrator")
    t.add_row("DIMSE C-STORE SCP", f"127.0.0.1:{platform.ports['dimse']} (AE title RADLOOP)")
    t.add_row("embedded AWS", platform.endpoint)
    for n, p in platform.processes.items():
        t.add_row(f"{n} (pid {p.pid})", platform.url(n))
    console.print(t)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    url: UrlOpt = None,
    token_: TokenOpt = None,
) -> None:
    """Show each service's health and URL and every queue's depth (DLQs included). Exits 1 if anything is unhealthy.

    With --url, a deployment's entry point is asked instead (one authenticated read per routed service).
    """
    if url:
        _remote_status(url, token_, as_json)
        return
    s = _settings()
    st = collect_status(s)
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        t = Table(title=f"radloop services (AWS: {st['endpoint']})")
        for c in ("service", "url", "health", "pid"):
            t.add_column(c)
        for name, v in st["services"].items():
            t.add_row(name, v["url"], "[green]ready[/]" if v["healthy"] else f"[red]down ({v['status']})[/]",
                      str(v["pid"] or "-"))
        console.print(t)
        q = Table(title="queues")
        for c in ("consumer", "waiting", "in flight", "DLQ"):
            q.add_column(c)
        for name, d in st["queues"].items():
            q.add_row(name, str(d["queue"]), str(d["queue_in_flight"]),
                      f"[red]{d['dlq']}[/]" if d["dlq"] else "0")
        console.print(q)
        if "queues_error" in st:
            err.print(f"[red]queues unavailable:[/] {st['queues_error']}")
        console.print(f"DIMSE SCP: 127.0.0.1:{st['dimse_port']} AE {st['dimse_ae_title']}")
        _print_aws_state(st.get("aws_state"))
    raise typer.Exit(0 if st["healthy"] else 1)


def _print_aws_state(aws_state: dict[str, Any] | None) -> None:
    """The embedded endpoint's data message (``aws_state`` of ``--json``): red when the data is gone."""
    if not aws_state:
        return
    lost, msg = aws_state.get("data_lost"), str(aws_state.get("message", ""))
    losses = aws_state.get("losses") or []
    if losses:
        msg += f" ({len(losses)} loss{'es' if len(losses) != 1 else ''} recorded since start)"
    if lost:
        err.print(f"[bold red]AWS endpoint:[/] {escape(msg)}")
    elif lost is None:
        err.print(f"[yellow]AWS endpoint:[/] {escape(msg)}")
    else:
        console.print(f"AWS endpoint: {escape(msg)}")


def _remote_status(url: str, token_: str | None, as_json: bool) -> None:
    from radloop.status import collect_remote_status

    try:
        st = collect_remote_status(resolve_url(url), resolve_token(token_))
    except OpsError as exc:
        raise fail(exc) from None
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        t = Table(title=f"radloop at {st['url']}")
        for c in ("service", "url", "health"):
            t.add_column(c)
        for name, v in st["services"].items():
            t.add_row(name, v["url"], "[green]ok[/]" if v["healthy"] else f"[red]{v['status'] or 'unreachable'}[/]")
        console.print(t)
    raise typer.Exit(0 if st["healthy"] else 1)


@app.command()
def token(
    role: Annotated[str, typer.Option(help="pacs | viewer | radiologist | ml | admin")] = "viewer",
    subject: Annotated[str | None, typer.Option(help="The user id in the token (default local-ROLE).")] = None,
    ttl: Annotated[int, typer.Option(min=60, max=7 * 24 * 3600, help="Lifetime in seconds (60 to 604,800).")] = 12 * 3600,
) -> None:
    """Mint a local development token (signed with the development key; refused outside environment=local)."""
    from shared.auth import mint_token

    s = _settings()
    if s.environment != "local":
        err.print("[red]tokens are minted only for environment=local; use your OIDC provider elsewhere[/]")
        raise typer.Exit(2)
    try:
        print(mint_token(s, role, subject=subject, ttl_s=ttl))
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None


@app.command()
def traces(
    trace_id: Annotated[str | None, typer.Argument(help="Show only this trace (32 hex digits).")] = None,
    last: Annotated[int, typer.Option(min=1, max=1000, help="How many recent traces to show (1 to 1,000).")] = 5,
) -> None:
    """Print recent traces from the local sink (var/traces) as trees."""
    from shared.telemetry import read_local_spans

    s = _settings()
    spans = read_local_spans(s.traces_dir)
    groups = build_trace_trees(spans, trace_id)
    if not groups:
        err.print(f"no traces{' with id ' + trace_id if trace_id else ''} in {s.traces_dir}")
        raise typer.Exit(1)
    ordered = sorted(groups.values(), key=lambda g: max(x["start_ns"] for x in g))
    for g in ordered[-last:] if not trace_id else ordered:
        console.print(render_trace(g))


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="A small cohort and small images: under about 3 minutes.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic cohort (the cohort is reproducible; which cases a "
                                           "round reads, and so the models, vary a little between runs).")] = 7,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="Leave the platform up afterwards.")] = False,
    out: Annotated[Path, typer.Option(help="Where the report is written.")] = Path("demo-report"),
    radiographs: Annotated[int | None, typer.Option(min=40, help="Override the number of chest radiographs.")] = None,
    waves: Annotated[int | None, typer.Option(
        min=1, max=10, help="Waves the cohort is sent in, each followed by a round of reading and a training run "
                            "(default 3; --radiographs 800 --waves 4 keeps 180 per wave).")] = None,
    double_read: Annotated[bool | None, typer.Option(
        "--double-read/--single-read",
        help="Two readers per case, the third adjudicating disagreements (the full demo's default), or one read per "
             "case (--quick's default).")] = None,
    read_error_rate: Annotated[float, typer.Option(min=0.0, max=0.5,
                                                   help="Share of simulated reads that disagree with the truth.")] = 0.03,
) -> None:
    """Run the whole triage-and-learning loop on generated data and write demo-report/ (HTML + JSON).

    It starts the platform, sends a synthetic cohort from a simulated PACS (STOW-RS, DIMSE C-STORE and the S3 drop
    folder), lets simulated radiologists read the AI-ordered worklist in rounds, and watches the orchestrator retrain
    and the registry promote models by itself. Exits 0 when at least one model was approved and used for triage.
    """
    from radloop.demo.run import Demo, DemoConfig

    kw: dict[str, Any] = {"seed": seed, "keep_running": keep_running, "out_dir": out,
                          "read_error_rate": read_error_rate}
    if double_read is not None:
        kw["double_read"] = double_read
    if radiographs is not None:
        kw["radiographs"] = radiographs
    if waves is not None:
        kw["waves"] = waves
    cfg = DemoConfig.quick(**kw) if quick else DemoConfig(**kw)
    per_wave = int(cfg.radiographs * (1 - cfg.final_share)) // cfg.waves
    if waves is not None and per_wave < cfg.trigger_min_new_labels:
        err.print(f"[red]--waves {cfg.waves}[/] leaves {per_wave} radiographs per wave, fewer than the "
                  f"{cfg.trigger_min_new_labels} new labels that start a training run after each round; "
                  f"send at least {math.ceil(cfg.trigger_min_new_labels * cfg.waves / (1 - cfg.final_share))} "
                  "radiographs (--radiographs) or fewer waves")
        raise typer.Exit(2)
    try:
        rc = Demo(cfg, console).run()
    except (RuntimeError, TimeoutError) as exc:
        err.print(f"[red]demo failed:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(rc)


@app.command()
def smoke(
    base: Annotated[str, typer.Option(help="Base URL of a deployment, e.g. http://127.0.0.1:8080")] = "http://127.0.0.1:8080",
    token_: Annotated[str | None, typer.Option("--token", help="Bearer token with the admin role (or pacs+viewer).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each asynchronous step.")] = 60.0,
) -> None:
    """Validate a deployment: store an image (STOW-RS), find it (QIDO), fetch a frame, wait for its triage score."""
    from radloop.smoke import main as smoke_main

    tok = token_
    if tok is None:
        from shared.auth import mint_token

        tok = mint_token(_settings(), "admin")
    raise typer.Exit(smoke_main(base, tok, timeout))


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":
    sys.exit(app())
