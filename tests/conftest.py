"""Shared fixtures (a real moto server process on loopback, settings with a unique prefix, clients, tokens) and the
test tiers.

Every test that touches AWS talks to one moto server started for the session (port chosen free). Isolation comes
from the deployment prefix: each ``deployment`` fixture gets its own prefix, so its bus, queues, buckets and tables
are its own, created by the real bootstrap.

Tiers. Every collected test gets exactly one of the markers ``unit``, ``integration`` and ``e2e``
(``pytest -m unit`` is ``make test-unit``). The rule, first match wins:

1. a tier marker the test (or its module's ``pytestmark``) sets itself;
2. a test under ``tests/e2e/`` or ``tests/viewer/`` (the demo loop, the real browser) is ``e2e``;
3. a test whose fixture closure holds ``moto`` (the session moto server: ``aws_endpoint``, ``make_settings``,
   ``deployment``, ``adeployment``, ``clients`` and every fixture built on them) is ``integration``;
4. a test in a module of ``_INTEGRATION_MODULES`` (it starts real processes without the moto server, or runs a real
   training job) is ``integration``;
5. anything else is ``unit``.

The unit tier's promise (no processes) is checked, not assumed: during a ``unit`` test, starting a subprocess or a
multiprocessing process raises ``UnitTierViolation`` naming the command (``_INCIDENTAL_COMMANDS``, read-only
queries libraries make, excepted). A test that needs a process sets
``pytestmark = pytest.mark.integration`` (or uses a fixture that does).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.process
import os
import subprocess
import threading
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

TIERS = ("unit", "integration", "e2e")
_TESTS_DIR = Path(__file__).resolve().parent
_E2E_DIRS = ("e2e", "viewer")
# Modules whose tests start real processes without asking for the session moto server (the CDK app through jsii's
# node process, cfn-lint/checkov/hadolint/zizmor, the pipeline's and the local executor's scripts, process pools,
# the API docs generator) or run a real training job (tens of seconds of CPU each). A process-starting module missing
# here fails loudly in the unit tier (UnitTierViolation), so this list cannot silently rot.
_INTEGRATION_MODULES = frozenset({
    "infra/test_checks.py",
    "infra/test_lint.py",
    "infra/test_stack.py",
    "mlops/test_executors.py",
    "test_api_docs.py",
    "training/test_evaluate_contract.py",
    "training/test_learning.py",
    "training/test_local_executor.py",
    "training/test_pipeline_definition.py",
    "training/test_resume.py",
    "training/test_synthetic.py",
    "triage/test_heatmap.py",
})
# Read-only queries that libraries run as a side effect (training records `git rev-parse HEAD`; matplotlib asks
# fc-list for fonts; ctypes' find_library runs `ldconfig -p`, platform runs `uname`): short-lived, no server, allowed
# in the unit tier.
_INCIDENTAL_COMMANDS = frozenset({"git", "fc-list", "ldconfig", "uname"})


def _tier_of(item: pytest.Item) -> str:
    """The tier of one collected test (the rule is in the module docstring)."""
    own = [m.name for m in item.iter_markers() if m.name in TIERS]
    if own:
        return own[0]
    rel = Path(str(item.path)).resolve().relative_to(_TESTS_DIR)
    if rel.parts and rel.parts[0] in _E2E_DIRS:
        return "e2e"
    if "moto" in getattr(item, "fixturenames", ()):
        return "integration"
    if rel.as_posix() in _INTEGRATION_MODULES:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test exactly one tier marker, so ``-m unit`` / ``-m integration`` / ``-m e2e`` partition the suite."""
    for item in items:
        tier = _tier_of(item)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))


class UnitTierViolation(RuntimeError):
    """A ``unit`` test tried to start a process: mark it (or its module) ``integration``."""


@contextlib.contextmanager
def _no_processes(nodeid: str) -> Iterator[None]:
    """Refuse subprocesses (``subprocess``, asyncio subprocesses) and multiprocessing processes (pools included)."""

    original = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def no_subprocess(self: subprocess.Popen[bytes], args: object, *rest: object, **kw: object) -> None:
        argv0 = args if isinstance(args, str | bytes | os.PathLike) else next(iter(args), "")  # type: ignore[call-overload]
        if os.path.basename(os.fsdecode(argv0).split()[0] if argv0 else "") in _INCIDENTAL_COMMANDS:
            return original(self, args, *rest, **kw)
        raise UnitTierViolation(f"{nodeid} is in the unit tier but starts the process {args!r}: mark it integration")

    def no_mp_process(self: object) -> None:
        raise UnitTierViolation(f"{nodeid} is in the unit tier but starts a multiprocessing process: mark it integration")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "_execute_child", no_subprocess)
        mp.setattr(multiprocessing.process.BaseProcess, "start", no_mp_process)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Run a ``unit`` test (its setup, fixtures of every scope set up for it, call and teardown) without processes."""
    if item.get_closest_marker("unit") is None:
        return (yield)
    with _no_processes(item.nodeid):
        return (yield)


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
def browser() -> Iterator[object]:
    """The session's one headless Chromium (tests/support/browser.py says why there is only one)."""
    from tests.support.browser import launch_browser

    yield from launch_browser()


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


def bootstrap_sync(settings: Settings) -> None:
    """Bootstrap ``settings``' deployment from synchronous code, whether or not an event loop runs in this thread.

    ``asyncio.run`` refuses to nest inside a running loop, so then the bootstrap runs on its own loop in a helper
    thread; either way it has finished (or its error is raised here) when this returns.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_bootstrap(settings))
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_bootstrap(settings))
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    worker = threading.Thread(target=run, name="bootstrap", daemon=True)
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():
        raise TimeoutError(f"bootstrapping prefix {settings.prefix} took over 120 s")
    if failure:
        raise failure[0]


@pytest.fixture
def deployment(make_settings: Callable[..., Settings]) -> Settings:
    """Settings of a freshly bootstrapped deployment (its own prefix, so its own queues, tables and buckets)."""
    s = make_settings()
    bootstrap_sync(s)
    return s


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
