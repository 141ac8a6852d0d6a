"""Run a service's SQS worker as a process of its own, without HTTP (``python -m services.<name>.worker``).

ECS stops tasks with SIGTERM: the handler stops receiving, lets in-flight messages finish (and be deleted), then the
process exits 0. A second SIGTERM or SIGINT is not special: draining is bounded by the handlers themselves.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping

from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.consumer import Handler, SqsConsumer
from shared.idempotency import IdempotencyStore
from shared.logging import setup_logging
from shared.publisher import EventPublisher
from shared.service import ServiceContext
from shared.settings import Settings
from shared.telemetry import setup_telemetry, shutdown_telemetry

log = logging.getLogger(__name__)


async def run_worker(
    service: str,
    handlers: Callable[[ServiceContext], Mapping[str, Handler]],
    *,
    settings: Settings | None = None,
    startup: Callable[[ServiceContext], Awaitable[None]] | None = None,
    **consumer_options: object,
) -> ServiceContext:
    settings = settings or Settings()
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
        if startup:
            await startup(ctx)
        consumer = SqsConsumer(clients, service, handlers(ctx), idempotency=ctx.idempotency, **consumer_options)  # type: ignore[arg-type]
        ctx.consumer = consumer
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
        log.info("worker started", extra={"service": service})
        await consumer.run()
    shutdown_telemetry()
    return ctx


def main(service: str, handlers: Callable[[ServiceContext], Mapping[str, Handler]],
         startup: Callable[[ServiceContext], Awaitable[None]] | None = None) -> None:
    asyncio.run(run_worker(service, handlers, startup=startup))
