"""Schemathesis against every service's OpenAPI schema (issue 15 §4): no 500, no hang, answers as documented.

Each service's app (``services.<name>.app.create_app(settings)``) runs in-process behind schemathesis' ASGI transport,
with its real lifespan (start-up, AWS clients, SQS worker) against a deployment bootstrapped on the session's moto
server. Every operation of its schema is fuzzed with a bounded number of generated requests, valid ones (positive:
they reach the handler and its storage) and invalid ones (negative: wrong types, missing and out-of-range values, which
must be refused with a 4xx), all carrying a valid admin bearer token so the requests get past authentication.

The bar for each response: ``not_a_server_error`` (no 5xx: a bad request is the client's fault and answered as such),
``response_schema_conformance`` (a documented status answers a body that matches its documented schema), and no hang
(each request is bounded by the module's pytest timeout; the examples per operation are bounded by
:data:`MAX_EXAMPLES`).

Examples are derandomised (the same requests on every run, so CI is reproducible); set ``RADLOOP_FUZZ_RANDOM=1`` to
explore new ones locally, and ``RADLOOP_FUZZ_EXAMPLES`` to generate more.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from shared.auth import mint_token
from shared.settings import Settings
from tests.conftest import bootstrap_sync, unique_prefix

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVICES = ("ingestion", "streaming_gateway", "triage", "verification", "pipeline_orchestrator", "registry")
MAX_EXAMPLES = int(os.environ.get("RADLOOP_FUZZ_EXAMPLES", "10"))
DERANDOMIZE = os.environ.get("RADLOOP_FUZZ_RANDOM", "") != "1"
# Operations not fuzzed, each with its reason (a fuzzer must not start real work the test cannot bound).
SKIP: dict[str, str] = {}


@pytest.fixture(scope="module")
def fuzz_settings(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One bootstrapped deployment shared by the six apps (each request is independent of the others)."""
    s = Settings(aws_endpoint_url=aws_endpoint, prefix=unique_prefix("fuzz"),
                 var_dir=tmp_path_factory.mktemp("fuzz-var"), aws_max_attempts=2, consumer_wait_time_s=1)
    bootstrap_sync(s)
    return s


@pytest.fixture(scope="module", autouse=True)
def _stop_apps() -> Iterator[None]:
    """Run each app's lifespan shutdown (consumers stop, clients close) when the module is done."""
    yield
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


def _check(case: Any, headers: dict[str, str]) -> None:
    response = case.call(headers=headers)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])


def _fuzz_operation(op: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=op.as_strategy(generation_mode=mode, headers=headers))
    def run(case: Any) -> None:
        _check(case, headers)

    run()


@pytest.mark.parametrize("service", SERVICES)
def test_schema_fuzz(service: str, fuzz_settings: Settings) -> None:
    """Every operation of ``service``'s OpenAPI schema, positive and negative examples: no failure of the bar."""
    app = importlib.import_module(f"services.{service}.app").create_app(fuzz_settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {mint_token(fuzz_settings, 'admin')}"}
    failures: list[str] = []
    ran: list[str] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        if op.label in SKIP:
            continue
        ran.append(op.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_operation(op, mode, headers)
            except Exception as exc:  # collected, so one run reports every failing operation
                failures.append(f"{op.label} [{mode.value}]: {type(exc).__name__}: {str(exc)[:1500]}")
    assert ran, f"{service}: the schema lists no operation"
    assert not failures, f"{service} ({time.monotonic() - started:.0f}s):\n\n" + "\n\n".join(failures)
