"""The two deployment environments, ``dev`` and ``prod``, chosen with ``cdk synth -c env=dev|prod``.

Everything that differs between them is here, as data: sizes, retention, Spot capacity, removal policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: CloudWatch Logs retention in prod: 7 years (2557 days is the closest value CloudWatch accepts), the seed's
#: retention for audit data in a hospital.
PROD_LOG_RETENTION_DAYS = 2557


@dataclass(frozen=True)
class TaskSize:
    cpu: int  # Fargate CPU units (1024 = 1 vCPU)
    memory_mib: int


@dataclass(frozen=True)
class EnvConfig:
    """Per-environment knobs of the stack."""

    name: str
    log_retention_days: int
    #: Retain buckets, tables, keys and log groups on stack deletion (prod) or delete them (dev).
    retain_data: bool
    #: Run queue workers on Fargate Spot (interruptions only delay work: SQS redelivers, consumers are idempotent).
    spot_workers: bool
    min_tasks: int
    max_tasks: int
    alb_deletion_protection: bool
    sizes: dict[str, TaskSize] = field(default_factory=dict)
    #: S3 noncurrent versions expire after this many days (recovery window for overwrites and deletes).
    noncurrent_version_days: int = 30
    #: Objects under ``imports/`` (the drop folder) expire after this many days: ingestion copies them out.
    imports_expire_days: int = 7
    #: Frames move to Intelligent-Tiering after this many days.
    frames_tiering_days: int = 0
    backup_retention_days: int = 35

    def size(self, service: str) -> TaskSize:
        return self.sizes.get(service, self.sizes["default"])


ENVIRONMENTS: dict[str, EnvConfig] = {
    "dev": EnvConfig(
        name="dev",
        log_retention_days=30,
        retain_data=False,
        spot_workers=True,
        min_tasks=1,
        max_tasks=2,
        alb_deletion_protection=False,
        sizes={
            "default": TaskSize(512, 1024),
            "triage": TaskSize(1024, 4096),
            "ingestion": TaskSize(1024, 2048),
        },
        noncurrent_version_days=7,
        backup_retention_days=7,
    ),
    "prod": EnvConfig(
        name="prod",
        log_retention_days=PROD_LOG_RETENTION_DAYS,
        retain_data=True,
        spot_workers=False,
        min_tasks=2,
        max_tasks=10,
        alb_deletion_protection=True,
        sizes={
            "default": TaskSize(1024, 2048),
            "triage": TaskSize(2048, 8192),
            "ingestion": TaskSize(2048, 4096),
            "streaming_gateway": TaskSize(2048, 4096),
        },
        noncurrent_version_days=90,
        backup_retention_days=35,
    ),
}


def env_config(name: str) -> EnvConfig:
    """The configuration of environment ``name``; a ValueError names the known ones."""
    try:
        return ENVIRONMENTS[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}: expected one of {sorted(ENVIRONMENTS)}") from None


@dataclass(frozen=True)
class DeployParams:
    """What the person deploying supplies (CDK context), with safe defaults for synthesis."""

    env: EnvConfig
    prefix: str
    account: str
    region: str
    #: ACM certificate for the ALB's HTTPS listener (a CloudFormation parameter when empty).
    certificate_arn: str = ""
    #: CIDR ranges of the hospital network allowed to reach the ALB and the DIMSE NLB (over VPN or Direct Connect).
    client_cidrs: tuple[str, ...] = ("10.0.0.0/8",)
    vpc_cidr: str = "10.42.0.0/16"
    alarm_email: str = ""
    #: OIDC issuer JWKS URL for RS256 tokens (RADLOOP_AUTH_JWKS_URL).
    auth_jwks_url: str = "https://login.example-hospital.org/.well-known/jwks.json"
    #: Calling AE titles of the PACS allowed to send over DIMSE (RADLOOP_DIMSE_ALLOWED_CALLING_AES; never "*").
    dimse_calling_aes: tuple[str, ...] = ("PACS",)
    #: A pipeline definition JSON file (``python -m training.pipeline definition --out FILE``) to upsert.
    pipeline_definition: str = ""


def params_from_context(get: Any) -> DeployParams:
    """Build :class:`DeployParams` from ``node.try_get_context``-like ``get``."""
    env = env_config(get("env") or "dev")
    cidrs = get("client_cidrs") or "10.0.0.0/8"
    if isinstance(cidrs, str):
        cidrs = tuple(c.strip() for c in cidrs.split(",") if c.strip())
    aes = get("dimse_calling_aes") or "PACS"
    if isinstance(aes, str):
        aes = tuple(a.strip() for a in aes.split(",") if a.strip())
    if "*" in aes:
        raise ValueError("dimse_calling_aes must list the PACS AE titles; a wildcard '*' is refused outside local")
    return DeployParams(
        env=env,
        prefix=get("prefix") or f"radloop-{env.name}",
        account=str(get("account") or "111111111111"),
        region=get("region") or "us-east-1",
        certificate_arn=get("certificate_arn") or "",
        client_cidrs=tuple(cidrs),
        vpc_cidr=get("vpc_cidr") or "10.42.0.0/16",
        alarm_email=get("alarm_email") or "",
        auth_jwks_url=get("auth_jwks_url") or DeployParams.auth_jwks_url,
        dimse_calling_aes=tuple(aes),
        pipeline_definition=get("pipeline_definition") or "",
    )
