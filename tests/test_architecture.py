"""The event flow is declared once: each service's handler map (``services.<name>.bootstrap.SPEC.handlers``) and the
topology's routing (``shared.topology.SUBSCRIPTIONS`` and the rules built from it) name the same events.

A handler without a subscription never runs; a subscription without a handler dead-letters every such event. Both are
caught here, in the unit tier (no AWS: the rules are compared as the topology declares them; tests/shared/
test_topology.py checks that bootstrap creates exactly those rules on a real endpoint).
"""

from __future__ import annotations

import importlib

import pytest

from shared.event_names import IMPORT_JOB_COMPLETED, IMPORT_JOB_FAILED, S3_OBJECT_CREATED
from shared.service import ServiceSpec
from shared.topology import SERVICES, SUBSCRIPTIONS, build_topology


def spec_of(service: str) -> ServiceSpec:
    """The service's one declaration."""
    spec = importlib.import_module(f"services.{service}.bootstrap").SPEC
    assert isinstance(spec, ServiceSpec), f"services.{service}.bootstrap.SPEC is not a ServiceSpec"
    assert spec.name == service
    return spec


def routed_to(service: str) -> set[str]:
    """Every ``detail-type`` the topology's rules deliver to the service's queue (none if it has no queue)."""
    topo = build_topology("arch")
    names: set[str] = set()
    for rule in topo.rules:
        if rule.target_queue == service:
            names.update(rule.event_pattern["detail-type"])
    return names


@pytest.mark.parametrize("service", SERVICES)
def test_subscriptions_are_the_handler_map(service: str) -> None:
    handled = spec_of(service).event_names()
    # radloop's own events are subscribed in SUBSCRIPTIONS; S3's "Object Created" (the drop folder) is AWS's event,
    # routed by the topology's s3-imports rule instead. HealthImaging's import-job events exist only in a deployment
    # with image_store=healthimaging: the CDK app adds their rule for its datastore (infra/radloop_infra/
    # healthimaging.py, checked by tests/infra/test_healthimaging.py), so the topology routes none of them.
    healthimaging = {IMPORT_JOB_COMPLETED, IMPORT_JOB_FAILED}
    own = tuple(sorted(n for n in handled if n != S3_OBJECT_CREATED and n not in healthimaging))
    assert tuple(sorted(SUBSCRIPTIONS.get(service, ()))) == own, (
        f"{service}: SUBSCRIPTIONS {sorted(SUBSCRIPTIONS.get(service, ()))} != handlers {list(own)}")
    assert routed_to(service) == set(handled) - healthimaging, \
        f"{service}: the rules deliver {sorted(routed_to(service))}"
    if healthimaging & set(handled):
        assert service == "ingestion", f"{service} handles HealthImaging's import-job events; only ingestion imports"
        assert healthimaging <= set(handled), f"{service} handles only some of HealthImaging's import-job events"


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_without_handlers_has_no_queue_and_no_subscription(service: str) -> None:
    spec = spec_of(service)
    topo = build_topology("arch")
    if spec.handlers:
        assert service in topo.queues, f"{service} handles events but has no queue"
        importlib.import_module(f"services.{service}.worker")  # the worker entry point exists
    else:
        assert service not in SUBSCRIPTIONS, f"{service} handles no events but SUBSCRIPTIONS routes some to it"
        assert service not in topo.queues, f"{service} handles no events but has a queue"
        assert not routed_to(service), f"rules deliver {sorted(routed_to(service))} to {service}, which has no handlers"


def test_every_subscriber_is_a_service() -> None:
    assert set(SUBSCRIPTIONS) <= set(SERVICES)
    assert {r.target_queue for r in build_topology("arch").rules} <= set(SERVICES)
