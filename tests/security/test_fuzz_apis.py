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

import asyncio
import importlib
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from radloop.smoke import generate_instance
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.settings import Settings
from shared.topology import SERVICES
from tests.conftest import bootstrap_sync, unique_prefix
from tests.streaming_gateway.store import store_instance

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MAX_EXAMPLES = int(os.environ.get("RADLOOP_FUZZ_EXAMPLES", "20"))
DERANDOMIZE = os.environ.get("RADLOOP_FUZZ_RANDOM", "") != "1"
# Operations not fuzzed, each with its reason (a fuzzer must not start real work the test cannot bound).
SKIP: dict[str, str] = {}


async def _seed(settings: Settings) -> dict[str, str]:
    """One stored, indexed CR, so requests that name it reach past the identifier checks into the handlers."""
    data, study, series, sop = generate_instance()
    async with AwsClients(settings) as clients:
        await store_instance(clients, data)
    return {"study": study, "series": series, "sop": sop}


@pytest.fixture(scope="module")
def fuzz_deployment(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, str]]:
    """One bootstrapped deployment shared by every service's app, holding one instance; and that instance's UIDs."""
    s = Settings(aws_endpoint_url=aws_endpoint, prefix=unique_prefix("fuzz"),
                 var_dir=tmp_path_factory.mktemp("fuzz-var"), aws_max_attempts=2, consumer_wait_time_s=1)
    bootstrap_sync(s)
    return s, asyncio.run(_seed(s))


@pytest.fixture(scope="module", autouse=True)
def _stop_apps() -> Iterator[None]:
    """Run each app's lifespan shutdown (consumers stop, clients close) when the module is done."""
    yield
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


def _check(case: Any, headers: dict[str, str], statuses: set[int]) -> None:
    response = case.call(headers=headers)
    statuses.add(response.status_code)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])


def _fuzz_operation(op: Any, mode: GenerationMode, headers: dict[str, str], statuses: set[int],
                    path_parameters: dict[str, str] | None = None) -> None:
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=op.as_strategy(generation_mode=mode, headers=headers, path_parameters=path_parameters))
    def run(case: Any) -> None:
        _check(case, headers, statuses)

    run()


@pytest.mark.parametrize("service", SERVICES)
def test_schema_fuzz(service: str, fuzz_deployment: tuple[Settings, dict[str, str]]) -> None:
    """Every operation of ``service``'s OpenAPI schema, positive and negative examples: no failure of the bar.

    Operations whose path names a stored study/series/instance get a third pass with the seeded UIDs fixed and
    everything else generated (query strings, frame lists, bodies), so the fuzzing reaches the handlers' own logic
    instead of stopping at the identifier check.
    """
    fuzz_settings, seeded = fuzz_deployment
    app = importlib.import_module(f"services.{service}.app").create_app(fuzz_settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {mint_token(fuzz_settings, 'admin')}"}
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    started = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        if op.label in SKIP:
            continue
        names = set(re.findall(r"{(\w+)}", op.path))
        passes: list[tuple[str, GenerationMode, dict[str, str] | None]] = [
            ("positive", GenerationMode.POSITIVE, None), ("negative", GenerationMode.NEGATIVE, None)]
        fixed_ids = {k: seeded[k] for k in names if k in seeded}
        if fixed_ids:  # the other path parameters (a frame list) are still generated
            passes.append(("stored", GenerationMode.POSITIVE, fixed_ids))
        for name, mode, fixed in passes:
            seen = statuses.setdefault(f"{op.label} [{name}]", set())
            try:
                _fuzz_operation(op, mode, headers, seen, fixed)
            except Unsatisfiable:
                # no invalid request exists for an operation without parameters or body (GET /healthz)
                if mode is not GenerationMode.NEGATIVE:
                    raise
            except Exception as exc:  # collected, so one run reports every failing operation
                failures.append(f"{op.label} [{name}]: {type(exc).__name__}: {str(exc)[:1500]}")
    assert statuses, f"{service}: the schema lists no operation"
    assert not failures, f"{service} ({time.monotonic() - started:.0f}s):\n\n" + "\n\n".join(failures)
    # The token let the valid requests past authentication: each operation answered something other than 401/403
    # to them (a fuzzer stopped at the door would test nothing behind it).
    stopped = {label: sorted(codes) for label, codes in statuses.items()
               if "[negative]" not in label and codes and codes <= {401, 403}}
    assert not stopped, f"{service}: only refused by auth: {stopped}"
    print(f"{service}: " + "; ".join(f"{k} {sorted(v)}" for k, v in statuses.items()))
