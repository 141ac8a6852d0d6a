"""aiobotocore clients, created once per process.

``AwsClients`` is an async context manager that opens one client per AWS service on first use and closes them all
on exit. Services create it in their lifespan (or worker start-up) and hand it to their handlers through
``bootstrap.py``; nothing creates clients per request.

``AWS_ENDPOINT_URL`` (``Settings.aws_endpoint_url``) overrides every service's endpoint; empty means real AWS.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import ClientError

from shared.settings import Settings

#: moto accepts any credentials; real AWS uses the task role (never these).
_LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def client_config(settings: Settings, *, max_pool_connections: int = 32) -> AioConfig:
    return AioConfig(
        connect_timeout=settings.aws_connect_timeout_s,
        read_timeout=settings.aws_read_timeout_s,
        retries={"max_attempts": settings.aws_max_attempts, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"},
    )


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``session.create_client`` (also used by synchronous boto3 callers)."""
    kw: dict[str, Any] = {"region_name": settings.region}
    if settings.aws_endpoint_url:
        kw["endpoint_url"] = settings.aws_endpoint_url
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            kw.update(_LOCAL_CREDENTIALS)
    return kw


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a child process that works on this deployment with the SDKs' own configuration (boto3 in
    ``training``): its prefix, region and endpoint (with moto's credentials), and this checkout on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["RADLOOP_PREFIX"] = settings.prefix
    env["AWS_DEFAULT_REGION"] = settings.region
    if settings.aws_endpoint_url:
        env["AWS_ENDPOINT_URL"] = settings.aws_endpoint_url
        env.setdefault("AWS_ACCESS_KEY_ID", _LOCAL_CREDENTIALS["aws_access_key_id"])
        env.setdefault("AWS_SECRET_ACCESS_KEY", _LOCAL_CREDENTIALS["aws_secret_access_key"])
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class AwsClients:
    """Lazily created, shared aiobotocore clients: ``await clients.get("s3")``."""

    def __init__(self, settings: Settings, session: AioSession | None = None, **config_kw: Any) -> None:
        self.settings = settings
        self._session = session or get_session()
        self._config = client_config(settings, **config_kw)
        self._stack = AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AwsClients:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._clients.clear()
        await self._stack.__aexit__(exc_type, exc, tb)

    async def get(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is not None:
            return client
        async with self._lock:
            if service not in self._clients:
                ctx = self._session.create_client(service, config=self._config, **client_kwargs(self.settings))
                client = await self._stack.enter_async_context(ctx)
                count_requests(client)
                self._clients[service] = client
            return self._clients[service]

    async def s3(self) -> Any:
        return await self.get("s3")

    async def sqs(self) -> Any:
        return await self.get("sqs")

    async def dynamodb(self) -> Any:
        return await self.get("dynamodb")

    async def events(self) -> Any:
        return await self.get("events")

    async def sagemaker(self) -> Any:
        return await self.get("sagemaker")


#: Error codes with which AWS says "not now" (throttling, overload), as opposed to "not this request".
UNAVAILABLE_CODES = frozenset({
    "ThrottlingException", "Throttling", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "SlowDown", "ServiceUnavailable", "InternalServerError", "InternalError", "RequestThrottled",
})


def is_unavailable(exc: ClientError) -> bool:
    """Whether an AWS error (after the SDK's retries) means the service is unavailable for now: a 5xx or a
    throttling code, for which the caller should be told to retry (503), not that the request is wrong."""
    err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
    status = (exc.response.get("ResponseMetadata", {}) if isinstance(exc.response, dict) else {}).get("HTTPStatusCode")
    return err.get("Code") in UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500)


def count_requests(client: Any) -> None:
    """Count every HTTP request the client sends (retries included) and its body's bytes, per API and operation
    (``radloop.aws.requests``, ``radloop.aws.request.bytes``): what AWS bills and throttles, and what a service's
    work costs per item (docs/ingestion.md, "What one instance costs on AWS")."""
    from shared.metrics import instrument

    requests, sent = instrument("radloop.aws.requests"), instrument("radloop.aws.request.bytes")

    def on_send(event_name: str = "", request: Any = None, **_: Any) -> None:
        parts = (event_name.split(".", 2) + ["", ""])[:3]  # before-send.<api>.<Operation>
        labels = {"api": parts[1], "operation": parts[2]}
        requests.add(1, labels)
        length = getattr(request, "headers", {}).get("Content-Length")  # set by botocore for streamed bodies too
        body = getattr(request, "body", None)
        size = int(length) if length and str(length).isdigit() else (
            len(body) if isinstance(body, (bytes, bytearray, str)) else 0)
        if size:
            sent.add(size, labels)

    client.meta.events.register("before-send", on_send)


def boto3_client(settings: Settings, service: str) -> Any:
    """A synchronous boto3 client for CLI tools and subprocess code (the local pipeline executor)."""
    import boto3
    from botocore.config import Config

    cfg = Config(
        connect_timeout=settings.aws_connect_timeout_s,
        read_timeout=settings.aws_read_timeout_s,
        retries={"max_attempts": settings.aws_max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    return boto3.client(service, config=cfg, **client_kwargs(settings))
