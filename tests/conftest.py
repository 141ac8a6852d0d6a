"""Shared fixtures: a real moto server process on loopback, settings with a unique prefix, clients, tokens.

Every test that touches AWS talks to one moto server started for the session (port chosen free). Isolation comes
from the deployment prefix: each ``deployment`` fixture gets its own prefix, so its bus, queues, buckets and tables
are its own, created by the real bootstrap.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)

from radloop.local.embedded_aws import EmbeddedAws, start_embedded_aws  # noqa: E402
from shared.auth import mint_token  # noqa: E402
from shared.aws import AwsClients  # noqa: E402
from shared.bootstrap import bootstrap_topology  # noqa: E402
from shared.settings import Settings  # noqa: E402

_MEMORY_EXPORTER = None


@pytest.fixture(scope="session", autouse=True)
def _tracing() -> Iterator[None]:
    """One recording tracer provider for the test process, with an in-memory exporter (see ``spans``)."""
    global _MEMORY_EXPORTER
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import shared.telemetry as telemetry

    if telemetry._configured is None:
        provider = TracerProvider()
        _MEMORY_EXPORTER = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_MEMORY_EXPORTER))
        trace.set_tracer_provider(provider)
        telemetry._configured = provider
    yield


@pytest.fixture
def spans() -> Iterator[object]:
    """The in-memory span exporter of this test process, cleared before the test."""
    assert _MEMORY_EXPORTER is not None
    _MEMORY_EXPORTER.clear()
    yield _MEMORY_EXPORTER


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedAws]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    emb = start_embedded_aws(log_path=log)
    try:
        yield emb
    finally:
        emb.stop()


@pytest.fixture(scope="session")
def aws_endpoint(moto: EmbeddedAws) -> str:
    return moto.endpoint


def unique_prefix(stem: str = "t") -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(aws_endpoint: str, tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings pointing at the session moto server, with a fresh prefix unless one is given."""

    def make(prefix: str | None = None, **kw: object) -> Settings:
        return Settings(
            aws_endpoint_url=aws_endpoint,
            prefix=prefix or unique_prefix(),
            var_dir=kw.pop("var_dir", tmp_path / "var"),  # type: ignore[arg-type]
            aws_max_attempts=2,
            **kw,  # type: ignore[arg-type]
        )

    return make


async def _bootstrap(settings: Settings) -> None:
    async with AwsClients(settings) as c:
        await bootstrap_topology(c)


@pytest.fixture
def deployment(make_settings: Callable[..., Settings]) -> Settings:
    """Settings of a freshly bootstrapped deployment (its own prefix, so its own queues, tables and buckets)."""
    s = make_settings()
    asyncio.run(_bootstrap(s)) if not _loop_running() else None
    return s


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest_asyncio.fixture(loop_scope="session")
async def adeployment(make_settings: Callable[..., Settings]) -> Settings:
    """Like ``deployment``, for async tests."""
    s = make_settings()
    await _bootstrap(s)
    return s


@pytest_asyncio.fixture(loop_scope="session")
async def clients(adeployment: Settings) -> AsyncIterator[AwsClients]:
    async with AwsClients(adeployment) as c:
        yield c


@pytest.fixture
def token_for() -> Callable[..., str]:
    def make(role: str, settings: Settings | None = None, **kw: object) -> str:
        return mint_token(settings or Settings(), role, **kw)  # type: ignore[arg-type]

    return make
