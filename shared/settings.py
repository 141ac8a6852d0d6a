"""Configuration for every radloop process (pydantic-settings).

All variables use the ``RADLOOP_`` prefix, except the standard ``AWS_*`` and ``OTEL_*`` names that AWS SDKs and
OpenTelemetry already define. Resource names are never configured one by one: they derive from ``RADLOOP_PREFIX``
through :mod:`shared.topology`, so code and infrastructure cannot drift apart.

Outside ``environment=local`` the settings refuse insecure defaults (the development signing key, wildcard AE
titles) at start-up, not at the first request.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topology import Topology, build_topology

#: The development key signs local tokens only. It is public (it is in this file) and refused outside ``local``.
DEV_SIGNING_KEY = "radloop-local-development-key-not-for-production-use"

#: Fixed default ports of the local runtime (each overridable per service with RADLOOP_PORT).
DEFAULT_PORTS: dict[str, int] = {
    "entry": 8080,
    "ingestion": 8081,
    "streaming_gateway": 8082,
    "verification": 8083,
    "pipeline_orchestrator": 8084,
    "registry": 8085,
    "triage": 8086,
    "dimse": 11112,
    "aws": 4566,
}

Environment = Literal["local", "dev", "prod"]


class Settings(BaseSettings):
    """Settings every service shares."""

    model_config = SettingsConfigDict(env_prefix="RADLOOP_", extra="ignore", frozen=True)

    environment: Environment = "local"
    prefix: str = "radloop"
    region: str = Field("us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION", "RADLOOP_REGION"))
    #: Empty means real AWS. Locally it points at the embedded moto server.
    aws_endpoint_url: str = Field(
        "", validation_alias=AliasChoices("AWS_ENDPOINT_URL", "RADLOOP_AWS_ENDPOINT_URL")
    )
    aws_connect_timeout_s: float = 5.0
    aws_read_timeout_s: float = 30.0
    aws_max_attempts: int = 4

    #: Where local state lives: trace sink, logs, pipeline work trees.
    var_dir: Path = Path("var")
    service_name: str = "radloop"
    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "INFO"

    # --- auth -------------------------------------------------------------------------------------------------------
    auth_signing_key: str = DEV_SIGNING_KEY
    auth_issuer: str = "radloop-local"
    auth_audience: str = "radloop"
    #: In AWS, tokens are RS256 from an OIDC provider whose keys are published here.
    auth_jwks_url: str = ""

    #: Key for pseudonymising patient IDs in events (HMAC-SHA256). Refused at its default outside ``local``.
    pseudonym_key: str = "radloop-local-pseudonym-key"

    # --- telemetry ----------------------------------------------------------------------------------------------------
    otel_exporter_otlp_endpoint: str = Field(
        "", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "RADLOOP_OTEL_EXPORTER_OTLP_ENDPOINT")
    )

    # --- consumer runtime ------------------------------------------------------------------------------------------
    consumer_concurrency: int = 8
    consumer_wait_time_s: int = 5
    idempotency_expiry_s: int = 3600
    idempotency_inprogress_expiry_s: int = 120

    @model_validator(mode="after")
    def _refuse_insecure_defaults(self) -> Settings:
        if self.environment != "local":
            if self.auth_signing_key == DEV_SIGNING_KEY and not self.auth_jwks_url:
                raise ValueError(
                    f"environment={self.environment!r} refuses the development signing key: set "
                    "RADLOOP_AUTH_JWKS_URL (OIDC) or RADLOOP_AUTH_SIGNING_KEY to a secret"
                )
            if self.pseudonym_key == "radloop-local-pseudonym-key":
                raise ValueError(
                    f"environment={self.environment!r} refuses the development pseudonym key: "
                    "set RADLOOP_PSEUDONYM_KEY to a secret"
                )
        return self

    @cached_property
    def topology(self) -> Topology:
        return build_topology(self.prefix)

    @property
    def traces_dir(self) -> Path:
        return self.var_dir / "traces"

    def port_for(self, service: str) -> int:
        return DEFAULT_PORTS[service]


def load(cls: type[Settings] = Settings, **overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (tests, CLI flags)."""
    return cls(**overrides)  # type: ignore[arg-type]
