"""One way to build a service: each service declares a :class:`ServiceSpec` once, and this module derives the rest.

A service's ``bootstrap.py`` holds its declaration::

    SPEC = ServiceSpec(
        name="triage", title="radloop triage", settings=TriageSettings,
        startup=startup,            # async (Runtime[TriageSettings]) -> TriageDeps, a dataclass
        shutdown=shutdown,          # async (TriageDeps) -> None
        routers=[router], handlers=HANDLERS, readiness=[model_ready],
    )

From it, shared code builds:

- :func:`build_app`: the FastAPI app (``app.py``), with structured logging, OpenTelemetry traces and metrics
  (``/metrics``, request latency per route template), ``/healthz`` and ``/readyz``, the one mapping of
  :class:`~shared.exceptions.DomainError` to a response, and the SQS consumer running inside the process (started in
  the lifespan, drained on shutdown);
- :func:`run_worker`: the SQS worker alone, without HTTP (``worker.py``);
- :func:`serve`: uvicorn on the service's port (``__main__.py``).

``HANDLERS`` is a plain map from event class to ``async (deps, event, message_context)``: the whole event-driven
behaviour of a service in one place. The topology's subscriptions are checked against these maps by a test.

Errors: a :class:`DomainError` keeps its status and reason; anything unexpected becomes a 500 that names only the
trace id, never an internal message or a storage key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from shared.audit import AuditLog
from shared.auth import jwks_problem
from shared.aws import AwsClients, is_unavailable
from shared.bootstrap import is_missing_resource, rebootstrap
from shared.consumer import Handler, MessageContext, SqsConsumer
from shared.exceptions import DomainError
from shared.idempotency import IdempotencyStore
from shared.logging import setup_logging
from shared.metrics import instrument, prometheus_text
from shared.publisher import EventPublisher
from shared.settings import DEFAULT_PORTS, Settings
from shared.telemetry import current_ids, instrument_fastapi, setup_telemetry, shutdown_telemetry

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Settings)
D = TypeVar("D")

#: ``async (deps, event, message_context) -> result`` (the result is logged and recorded as the idempotent outcome).
DepsHandler = Callable[[Any, Any, MessageContext], Awaitable[Any]]
#: Event class (a model with a ``name`` class variable, the ``detail-type``) -> handler.
HandlerMap = Mapping[type, DepsHandler]


@dataclass
class Runtime(Generic[S]):
    """What shared code creates for every service process and hands to the service's ``startup``."""

    service: str
    settings: S
    clients: AwsClients
    publisher: EventPublisher
    idempotency: IdempotencyStore
    audit: AuditLog
    #: ``app``: the HTTP process (which also runs the worker); ``worker``: the worker-only process.
    role: Literal["app", "worker"] = "app"


@dataclass(frozen=True)
class ServiceSpec(Generic[S, D]):
    """The one declaration of a service: settings, startup, routes, event handlers, readiness."""

    name: str
    title: str
    settings: type[S]
    #: Builds the service's dependencies (a dataclass) from the runtime; may start background tasks.
    startup: Callable[[Runtime[S]], Awaitable[D]]
    description: str = ""
    routers: Sequence[APIRouter] = ()
    handlers: HandlerMap | None = None
    shutdown: Callable[[D], Awaitable[None]] | None = None
    #: Each returns a reason the service is not ready, or None.
    readiness: Sequence[Callable[[D], Awaitable[str | None]]] = ()
    #: Keyword arguments of the :class:`SqsConsumer`, from the settings.
    consumer_options: Callable[[S], Mapping[str, Any]] | None = None
    #: Adds what a router cannot (static mounts) to the app.
    configure: Callable[[FastAPI, S], None] | None = None
    #: Requests under these path prefixes are sent once, in process, before the app serves (see :func:`warm_routes`).
    warm_prefixes: tuple[str, ...] = ()

    def load_settings(self, base: Settings | None = None) -> S:
        """This service's settings: ``base``'s shared fields where given, the service's own fields from the env."""
        if isinstance(base, self.settings):
            return base
        if base is None:
            return self.settings()
        return self.settings(**base.model_dump())

    def event_names(self) -> tuple[str, ...]:
        """The ``detail-type`` of every event this service handles (what the topology must subscribe it to)."""
        return tuple(sorted(event_name(cls) for cls in (self.handlers or {})))

    def bind_handlers(self, deps: D) -> dict[str, Handler]:
        """The consumer's map (detail-type -> ``async (event, message_context)``) with ``deps`` bound."""
        return {event_name(cls): functools.partial(h, deps) for cls, h in (self.handlers or {}).items()}


def event_name(cls: type) -> str:
    """The ``detail-type`` of an event class (its ``name`` class variable)."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} is not an event class: it has no 'name' (detail-type)")
    return name


def get_deps(request: Request) -> Any:
    """The running service's dependencies (what its ``startup`` returned); routes use a typed ``Annotated`` alias."""
    deps = getattr(request.app.state, "deps", None)
    if deps is None:
        raise DomainError("The service is starting.", status=503, headers={"Retry-After": "1"})
    return deps


def _runtime(spec: ServiceSpec[S, D], settings: S, clients: AwsClients, role: Literal["app", "worker"]) -> Runtime[S]:
    return Runtime(
        service=spec.name,
        settings=settings,
        clients=clients,
        publisher=EventPublisher(clients, spec.name),
        idempotency=IdempotencyStore(clients),
        audit=AuditLog(clients, spec.name),
        role=role,
    )


def _consumer(spec: ServiceSpec[S, D], rt: Runtime[S], deps: D) -> SqsConsumer:
    options = dict(spec.consumer_options(rt.settings)) if spec.consumer_options else {}
    if rt.settings.aws_endpoint_url:
        # The embedded endpoint keeps its state in memory: if it restarts, the queue vanishes, and the consumer
        # re-creates the topology instead of failing (docs/reliability.md). Never in AWS, where the CDK app owns it.
        options.setdefault("on_missing_queue", functools.partial(rebootstrap, rt.clients))
    return SqsConsumer(rt.clients, spec.name, spec.bind_handlers(deps), idempotency=rt.idempotency, **options)


def loop_time() -> float:
    """Monotonic seconds (the drain deadline's clock)."""
    return time.monotonic()


def build_app(spec: ServiceSpec[S, D], settings: Settings | None = None) -> FastAPI:
    """The FastAPI app of a service (see the module docstring)."""
    s = spec.load_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(spec.name, s.log_level)
        setup_telemetry(s, spec.name)
        async with AwsClients(s) as clients:
            rt = _runtime(spec, s, clients, "app")
            app.state.runtime = rt
            deps = await spec.startup(rt)
            worker: asyncio.Task[None] | None = None
            consumer: SqsConsumer | None = None
            if spec.handlers:
                consumer = _consumer(spec, rt, deps)
                worker = asyncio.create_task(_run_consumer(consumer), name=f"{spec.name}-worker")
            app.state.consumer = consumer
            app.state.worker = worker
            app.state.loop = asyncio.get_running_loop()
            app.state.deps = deps  # uvicorn serves nothing before this lifespan start-up returns
            if spec.warm_prefixes:
                await warm_routes(app, spec.warm_prefixes)
            frozen = freeze_startup_heap()
            log.info("service started", extra={"port": s.port, "gc_frozen_objects": frozen})
            try:
                yield
            finally:
                # serve() already stopped receiving when the signal arrived, so in-flight messages finished while
                # HTTP drained; whatever remains gets the rest of the budget, then the service's own shutdown.
                deadline = getattr(app.state, "drain_deadline", None) or (loop_time() + s.drain_timeout_s)
                if consumer is not None and worker is not None:
                    consumer.stop()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(worker, timeout=max(0.1, deadline - loop_time()))
                if spec.shutdown:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(spec.shutdown(deps), timeout=max(0.5, deadline - loop_time()))
                shutdown_telemetry()
                log.info("service stopped")

    app = FastAPI(title=spec.title, description=spec.description, version=_version(), lifespan=lifespan)
    app.state.settings = s
    app.state.spec = spec

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": spec.name}

    @app.get("/readyz", tags=["health"], summary="Readiness: dependencies reachable and the worker running.")
    async def readyz(request: Request) -> JSONResponse:
        return await _readiness(spec, request.app)

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes each invalid input, and a NaN or Infinity in a JSON body made that answer
        # unserialisable (500; found by a review): say where and what, not the value.
        return JSONResponse({"detail": [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]},
                            status_code=422)

    async def dependency_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The AWS endpoint (S3, DynamoDB...) did not answer, or answered that it is overloaded, after the SDK's
        # retries: the service is fine and a dependency is not, so 503 with when to retry (it was 500 "internal
        # error", found by a review; readiness already said 503).
        if isinstance(exc, ClientError) and not is_unavailable(exc):
            return await unexpected(request, exc)
        log.warning("a dependency is unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
        return JSONResponse({"detail": "a storage or index dependency is unavailable; retry later"},
                            status_code=503, headers={"Retry-After": "5"})

    for unavailable in (BotoConnectionError, HTTPClientError, ClientError):
        app.add_exception_handler(unavailable, dependency_unavailable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        trace_id, _ = current_ids()
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse({"detail": "internal error", "trace_id": trace_id}, status_code=500)

    @app.get("/metrics", tags=["health"], summary="Prometheus exposition of this process's metrics.",
             include_in_schema=False)
    async def metrics_endpoint() -> Response:
        body, content_type = prometheus_text()
        return Response(body, media_type=content_type)

    for r in spec.routers:
        app.include_router(r)
    if spec.configure:
        spec.configure(app, s)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(RouteMetricsMiddleware)
    instrument_fastapi(app)
    _document_domain_errors(app)
    return app


def _document_domain_errors(app: FastAPI) -> None:
    """Make the schema say what a 422 answers: FastAPI's validation list, or a DomainError's sentence.

    FastAPI documents every 422 as ``{"detail": [ValidationError, ...]}``, but a :class:`DomainError` with status 422
    (an invalid UID in a path, an impossible read) answers ``{"detail": "sentence"}``; a client generated from the
    schema would fail to parse it (schemathesis' response_schema_conformance found it: tests/security/).
    """
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            props = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError", {}).get("properties", {})
            detail = props.get("detail")
            if detail is not None and "anyOf" not in detail:
                listed = {k: v for k, v in detail.items() if k != "title"}
                props["detail"] = {"title": "Detail", "anyOf": [listed, {"type": "string"}],
                                   "description": "The invalid fields, or one sentence saying what is wrong."}
        return app.openapi_schema or original()

    app.openapi = openapi  # type: ignore[method-assign]


class HeadAsGetMiddleware:
    """``HEAD`` is answered as ``GET`` without the body (RFC 9110 §9.3.2: a general-purpose server supports both).

    FastAPI registers ``GET`` routes only, so ``HEAD`` was 405 everywhere (found by a review, session 22: proxies and
    clients that check a size or an ``ETag`` with ``HEAD`` failed). The application sees a ``GET`` (its own copy of
    the scope); the server, whose scope still says ``HEAD``, sends the status and headers and drops the body.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, send)
        finally:
            if "route" in inner:  # the route template, for the metrics around this middleware
                scope["route"] = inner["route"]


class RouteMetricsMiddleware:
    """Records ``radloop.http.server.duration`` per route TEMPLATE, method and status (pure ASGI: no body buffering).

    The route label is the matched route's template (``/dicomweb/studies/{study}``), read from the scope after
    routing; a request no route matched is ``unmatched``. Concrete paths hold UIDs and query strings hold matching
    keys (PHI), so neither is ever a label. Health and scrape endpoints are not measured.
    """

    _SKIP = frozenset({"/metrics", "/healthz", "/readyz"})

    def __init__(self, app: Any) -> None:
        self.app = app
        self.histogram = instrument("radloop.http.server.duration")

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self._SKIP:
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.histogram.record(time.perf_counter() - start,
                                  {"method": scope.get("method", ""), "route": template, "status": status})


async def _readiness(spec: ServiceSpec[S, D], app: FastAPI) -> JSONResponse:
    rt: Runtime[Any] | None = getattr(app.state, "runtime", None)
    deps = getattr(app.state, "deps", None)
    problems: list[str] = []
    if rt is None or deps is None:
        problems.append("starting")
    else:
        problems += [p for p in [await _check_aws(rt), await jwks_problem(rt.settings)] if p]
        worker = getattr(app.state, "worker", None)
        if worker is not None and worker.done():
            problems.append("worker stopped")
        consumer_: SqsConsumer | None = getattr(app.state, "consumer", None)
        if consumer_ is not None and consumer_.queue_missing_since is not None:
            problems.append(f"queue missing for {time.time() - consumer_.queue_missing_since:.0f}s: re-creating the "
                            "topology")
        for check in spec.readiness:
            try:
                p = await check(deps)
            except Exception as exc:  # a check that fails is a not-ready reason, not a 500
                p = f"{check.__name__}: {type(exc).__name__}"
            if p:
                problems.append(p)
    body: dict[str, Any] = {"status": "ready" if not problems else "not ready", "service": spec.name}
    if problems:
        body["problems"] = problems
    consumer: SqsConsumer | None = getattr(app.state, "consumer", None)
    if consumer is not None:
        st = consumer.stats
        body["worker"] = {"received": st.received, "succeeded": st.succeeded, "failed": st.failed,
                          "duplicates": st.duplicates, "dead_lettered": st.dead_lettered, "in_flight": st.in_flight}
    return JSONResponse(body, status_code=200 if not problems else 503)


async def _run_consumer(consumer: SqsConsumer) -> None:
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


async def _check_aws(rt: Runtime[Any]) -> str | None:
    try:
        ddb = await rt.clients.dynamodb()
        await asyncio.wait_for(ddb.describe_table(TableName=rt.settings.topology.table("idempotency")), 5)
    except Exception as exc:
        if rt.settings.aws_endpoint_url and is_missing_resource(exc):
            # The endpoint answers but its tables are gone: moto restarted and lost everything it held in memory.
            return ("embedded AWS endpoint restarted: its stored data is gone; the topology is being re-created "
                    "(see `radloop status`)")
        return f"aws unreachable: {type(exc).__name__}"
    return None


def freeze_startup_heap() -> int:
    """Put every object alive once a service has started (modules, the SDKs' service models, FastAPI's routes, the
    settings) out of the cyclic garbage collector's reach (``gc.freeze``), so that a full collection scans only what
    the service created since. Without it, each full collection in the streaming gateway walked the whole heap and
    stopped the event loop for 40-120 ms (most of them freeing nothing): the frames' p99 at c=16 (docs/performance.md).
    Objects frozen here are still freed by reference counting when they are released. Returns how many are frozen
    (the "service started" log line says it)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def warm_routes(app: FastAPI, prefixes: tuple[str, ...]) -> None:
    """Send one unauthenticated GET (answered 401) through every route under ``prefixes``, in process.

    FastAPI and its OpenTelemetry instrumentation build each route's dependency state on the first request, which
    takes most of a second: without this, the first image a radiologist opens would pay for it.
    """
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    for route in app.routes:
        path = getattr(route, "path", "")
        if not path.startswith(prefixes):
            continue
        concrete = path
        for name in ("frame_list", "study", "series", "sop"):
            concrete = concrete.replace("{" + name + "}", "1")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": concrete, "raw_path": concrete.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"warm-up")], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
        }
        try:
            await app(scope, receive, send)
        except Exception:  # warming is best effort
            log.debug("route warm-up failed", extra={"path": path})


async def run_worker(spec: ServiceSpec[S, D], settings: Settings | None = None) -> D:
    """Run a service's SQS worker without HTTP until SIGTERM/SIGINT; returns the service's dependencies.

    ECS stops tasks with SIGTERM: receiving stops, in-flight messages finish (and are deleted), then the process
    exits 0.
    """
    if not spec.handlers:
        raise ValueError(f"service {spec.name!r} handles no events: it has no worker")
    s = spec.load_settings(settings)
    setup_logging(spec.name, s.log_level)
    setup_telemetry(s, spec.name)
    async with AwsClients(s) as clients:
        rt = _runtime(spec, s, clients, "worker")
        deps = await spec.startup(rt)
        consumer = _consumer(spec, rt, deps)
        frozen = freeze_startup_heap()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
        log.info("worker started", extra={"service": spec.name, "gc_frozen_objects": frozen})
        try:
            await consumer.run()
        finally:
            if spec.shutdown:
                await spec.shutdown(deps)
    shutdown_telemetry()
    return deps


def worker_main(spec: ServiceSpec[S, D]) -> None:
    """Entry point of ``python -m services.<name>.worker``."""
    asyncio.run(run_worker(spec))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("radloop")
    except Exception:
        return "0.0.0"


def serve(spec: ServiceSpec[S, D], settings: Settings | None = None) -> None:
    """Run a service with uvicorn on its port (``RADLOOP_PORT`` or the documented default).

    Shutdown order on SIGTERM (how ECS stops a task), all within ``drain_timeout_s``: the consumer stops receiving at
    once; HTTP stops accepting and drains (at most half the budget) while in-flight messages finish; then the
    lifespan waits for the remaining messages and runs the service's shutdown until the deadline.
    """
    import uvicorn

    s = spec.load_settings(settings)
    port = s.port or DEFAULT_PORTS[spec.name]
    s = cast(S, s.model_copy(update={"port": port, "service_name": spec.name}))
    app = build_app(spec, s)
    config = uvicorn.Config(app, host=s.host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=max(1, int(s.drain_timeout_s / 2)))
    _DrainingServer(config, app, s.drain_timeout_s).run()


class _DrainingServer:
    """uvicorn's server, but a stop signal first stops the SQS consumer (no new message is taken while HTTP drains)."""

    def __init__(self, config: Any, app: FastAPI, budget_s: float) -> None:
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                outer.on_signal()
                super().handle_exit(sig, frame)
                # uvicorn re-raises a captured signal once it has shut down, so a task that drained completely
                # would still die of SIGTERM (exit 143). A drained SIGTERM is a clean stop: exit 0.
                if sig == signal.SIGTERM:
                    self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

        self.server = Server(config)
        self.app = app
        self.budget_s = budget_s

    def on_signal(self) -> None:
        if getattr(self.app.state, "drain_deadline", None) is None:
            self.app.state.drain_deadline = loop_time() + self.budget_s - 1.0
        consumer: SqsConsumer | None = getattr(self.app.state, "consumer", None)
        loop = getattr(self.app.state, "loop", None)
        if consumer is not None and loop is not None:
            loop.call_soon_threadsafe(consumer.stop)  # signal handlers run between the loop's steps

    def run(self) -> None:
        self.server.run()
