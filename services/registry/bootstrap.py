"""Wires the registry service's dependencies into its context at start-up."""

from __future__ import annotations

from services.registry.domain.policy import ApprovalPolicy
from services.registry.domain.registry import Registry
from services.registry.settings import RegistrySettings
from shared.service import ServiceContext


def load_policy(settings: RegistrySettings) -> ApprovalPolicy:
    """The approval policy file with the settings' overrides applied."""
    return ApprovalPolicy.load(
        settings.approval_policy_file,
        auc_margin=settings.approval_auc_margin,
        auc_floor=settings.approval_auc_floor,
        sensitivity_floor=settings.approval_sensitivity_floor,
    )


async def startup(ctx: ServiceContext) -> None:
    """Load the approval policy (a bad policy file stops start-up) and create the registry."""
    settings = ctx.settings
    if not isinstance(settings, RegistrySettings):
        # The stand-alone worker passes base Settings: read this service's own fields from the environment.
        settings = RegistrySettings().model_copy(update={"service_name": settings.service_name})
    ctx.extras["registry"] = Registry(
        ctx.clients, ctx.publisher, load_policy(settings), resamples=settings.card_bootstrap_resamples
    )
