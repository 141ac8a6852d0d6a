"""The runtime every radloop service process shares: one FastAPI app, optionally with an SQS worker inside.

A service is ``handlers`` (a map from event name to handler) plus routers. :func:`service_app` wires the rest:

- structured logging and OpenTelemetry (FastAPI instrumentation, spans for every request);
- one :class:`~shared.aws.AwsClients` per process, the publisher, the idempotency store and the audit log, gathered in a
  :class:`ServiceContext` that ``bootstrap.py`` extends and hands to handlers and routes;
- the SQS consumer, started in the lifespan and drained on shutdown. uvicorn turns SIGTERM (how ECS stops a task)
  into a lifespan shutdown, so in-flight messages finish and are deleted before the process exits;
- ``/healthz`` (liveness: the process answers) and ``/readyz`` (readiness: AWS reachable, the worker alive, plus the
  service's own checks), answering 503 with the reasons when not ready;
- errors: HTTP errors keep their status and reason; anything unexpected becomes a 500 that names only the trace id,
  never an internal message or a storage key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.consumer import Handler, SqsConsumer
from shared.idempotency import IdempotencyStore
from shared.logging import setup_logging
from shared.publisher import EventPublisher
from shared.settings import DEFAULT_PORTS, Settings
from shared.telemetry import current_ids, instrument_fastapi, setup_telemetry, shutdown_telemetry

log = logging.getLogger(__name__)

ReadinessCheck = Callable[["ServiceContext"], Awaitable[str | None]]


@dataclass
class ServiceContext:
    """Dependencies of one service process. ``bootstrap.py`` may put service objects into ``extras``."""

    service: str
    settings: Settings
    clients: AwsClients
    publisher: EventPublisher
    idempotency: IdempotencyStore
    audit: AuditLog
    consumer: SqsConsumer | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.extras[key]


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


ContextDep = Annotated[ServiceContext, Depends(get_ctx)]


def service_app(
    service: str,
    settings: Settings,
    *,
    title: str,
    description: str = "",
    routers: Sequence[APIRouter] = (),
    handlers: Callable[[ServiceContext], Mapping[str, Handler]] | None = None,
    startup: Callable[[ServiceContext], Awaitable[None]] | None = None,
    shutdown: Callable[[ServiceContext], Awaitable[None]] | None = None,
    readiness: Sequence[ReadinessCheck] = (),
    consumer_options: Mapping[str, Any] | None = None,
) -> FastAPI:
    """Build the FastAPI app of a service (see the module docstring)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(service, settings.log_level)
        setup_telemetry(settings, service)
        async with AwsClients(settings) as clients:
            ctx = ServiceContext(
                service=service,
                settings=settings,
                clients=clients,
                publisher=EventPublisher(clients, service),
                idempotency=IdempotencyStore(clients),
                audit=AuditLog(clients, service),
            )
            app.state.ctx = ctx
            app.state.settings = settings
            if startup:
                await startup(ctx)
            worker: asyncio.Task[None] | None = None
            if handlers is not None:
                ctx.consumer = SqsConsumer(
                    clients, service, handlers(ctx), idempotency=ctx.idempotency, **dict(consumer_options or {})
                )
                worker = asyncio.create_task(_run_worker(ctx.consumer), name=f"{service}-worker")
                app.state.worker = worker
            log.info("service started", extra={"port": settings.port})
            try:
                yield
            finally:
                if ctx.consumer is not None and worker is not None:
                    ctx.consumer.stop()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(worker, timeout=float(os.environ.get("RADLOOP_DRAIN_TIMEOUT_S", "60")))
                if shutdown:
                    await shutdown(ctx)
                shutdown_telemetry()
                log.info("service stopped")

    app = FastAPI(title=title, description=description, version=_version(), lifespan=lifespan)
    app.state.settings = settings

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["health"], summary="Readiness: dependencies reachable and the worker running.")
    async def readyz(request: Request) -> JSONResponse:
        ctx: ServiceContext | None = getattr(request.app.state, "ctx", None)
        problems: list[str] = []
        if ctx is None:
            problems.append("starting")
        else:
            problems += [p for p in [await _check_aws(ctx)] if p]
            worker = getattr(request.app.state, "worker", None)
            if worker is not None and worker.done():
                problems.append("worker stopped")
            for check in readiness:
                try:
                    p = await check(ctx)
                except Exception as exc:  # a check that fails is a not-ready reason, not a 500
                    p = f"{check.__name__}: {type(exc).__name__}"
                if p:
                    problems.append(p)
        body: dict[str, Any] = {"status": "ready" if not problems else "not ready", "service": service}
        if problems:
            body["problems"] = problems
        if ctx is not None and ctx.consumer is not None:
            s = ctx.consumer.stats
            body["worker"] = {"received": s.received, "succeeded": s.succeeded, "failed": s.failed,
                              "duplicates": s.duplicates, "dead_lettered": s.dead_lettered, "in_flight": s.in_flight}
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        trace_id, _ = current_ids()
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse({"detail": "internal error", "trace_id": trace_id}, status_code=500)

    for r in routers:
        app.include_router(r)
    instrument_fastapi(app)
    return app


async def _run_worker(consumer: SqsConsumer) -> None:
    # A receive loop that crashes is restarted with backoff: the service stays up and /readyz reports it meanwhile.
    delay = 1.0
    while not consumer.stopping:
        try:
            await consumer.run()
            return
        except Exception:
            log.exception("worker loop crashed; restarting", extra={"delay_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _check_aws(ctx: ServiceContext) -> str | None:
    try:
        ddb = await ctx.clients.dynamodb()
        await asyncio.wait_for(ddb.describe_table(TableName=ctx.settings.topology.table("idempotency")), 5)
    except Exception as exc:
        return f"aws unreachable: {type(exc).__name__}"
    return None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("radloop")
    except Exception:
        return "0.0.0"


def serve(service: str, app_factory: Callable[[Settings], FastAPI], settings: Settings | None = None) -> None:
    """Run a service with uvicorn on its port (``RADLOOP_PORT`` or the documented default)."""
    import uvicorn

    settings = settings or Settings()
    port = settings.port or DEFAULT_PORTS[service]
    settings = settings.model_copy(update={"port": port, "service_name": service})
    app = app_factory(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(os.environ.get("RADLOOP_DRAIN_TIMEOUT_S", "60")),
    )
