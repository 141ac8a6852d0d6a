"""The registry service's declaration (:data:`SPEC`) and its start-up: the approval policy and the registry."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from services.registry import SERVICE
from services.registry.api.routes import router
from services.registry.handlers import HANDLERS
from services.registry.service import Registry
from services.registry.settings import RegistrySettings
from shared.approval import ApprovalPolicy, refuse_removed_variables
from shared.service import Runtime, ServiceSpec


@dataclass
class RegistryDeps:
    """What the handlers and routes of the registry use."""

    rt: Runtime[RegistrySettings]
    registry: Registry


async def startup(rt: Runtime[RegistrySettings]) -> RegistryDeps:
    """Load the approval policy (a bad policy document stops start-up) and create the registry."""
    refuse_removed_variables()
    policy = ApprovalPolicy.load(rt.settings.approval_policy_file)
    registry = Registry(rt.clients, rt.publisher, policy, resamples=rt.settings.card_bootstrap_resamples)
    with contextlib.suppress(Exception):  # the champion-version gauge from the start; a miss is no start-up failure
        await registry.champion()
    return RegistryDeps(rt=rt, registry=registry)


SPEC: ServiceSpec[RegistrySettings, RegistryDeps] = ServiceSpec(
    name=SERVICE,
    title="radloop registry",
    description="Model versions, metrics, lineage, approval, champion and rollback.",
    settings=RegistrySettings,
    startup=startup,
    routers=[router],
    handlers=HANDLERS,
)
