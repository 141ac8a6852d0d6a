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

#: The issuer and audience of locally minted tokens: placeholders, refused outside ``local``.
LOCAL_ISSUER = "radloop-local"
LOCAL_AUDIENCE = "radloop"


def _is_placeholder(value: str) -> bool:
    """Values copied from examples (``example.org``, ``changeme``...) that no real identity provider uses."""
    v = value.lower()
    return any(p in v for p in ("example.", "example-", "changeme", "change-me", "placeholder", "todo"))


#: Fixed default ports of the local runtime (each overridable per service with RADLOOP_PORT).
DEFAULT_PORTS: dict[str, int] = {
    "entry": 8080,
    "ingestion": 8081,
    "streaming_gateway": 8082,
    "verification": 8083,
    "pipeline_orchestrator": 8084,
    "registry": 8085,
    "triage": 8086,
    "interop": 8087,
    "dimse": 11112,
    # the interop service's DIMSE Query/Retrieve SCP (docs/interop.md)
    "qr": 11113,
    "aws": 4566,
}

Environment = Literal["local", "dev", "prod"]

#: SQS refuses a longer visibility timeout.
_SQS_MAX_VISIBILITY_S = 43_200


class Settings(BaseSettings):
    """Settings every service shares."""

    model_config = SettingsConfigDict(env_prefix="RADLOOP_", extra="ignore", frozen=True)

    #: Required, with no default: a container started without RADLOOP_ENVIRONMENT refuses to start, so a production
    #: task can never fall back to ``local`` (which accepts tokens signed with the public development key).
    environment: Environment
    #: Names every queue, table, bucket and bus of one deployment (shared.topology.build_topology).
    prefix: str = "radloop"
    #: The AWS region (AWS_REGION first, as the SDKs read it).
    region: str = Field("us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION", "RADLOOP_REGION"))
    #: Empty means real AWS. Locally it points at the embedded moto server.
    aws_endpoint_url: str = Field(
        "", validation_alias=AliasChoices("AWS_ENDPOINT_URL", "RADLOOP_AWS_ENDPOINT_URL")
    )
    #: AWS SDK calls: connection timeout.
    aws_connect_timeout_s: float = 5.0
    #: AWS SDK calls: read timeout.
    aws_read_timeout_s: float = 30.0
    #: AWS SDK calls: attempts in all, first included (botocore retry mode ``standard``).
    aws_max_attempts: int = 4

    #: Where local state lives: trace sink, logs, pipeline work trees.
    var_dir: Path = Path("var")
    #: The local platform only (``radloop up``): streaming gateway processes behind the entry point, each on its own
    #: port with its own caches (nginx sends each request to the least busy). One Python process serves on one core;
    #: on AWS the same is more gateway tasks behind the load balancer (prod runs at least two).
    local_gateway_replicas: int = Field(1, ge=1, le=8)
    #: The service's name in logs, traces and metrics (``service.name``); each image sets its own.
    service_name: str = "radloop"
    #: The HTTP listen address (containers set 0.0.0.0).
    host: str = "127.0.0.1"
    #: The HTTP port; 0 takes the service's fixed local port (shared.settings.DEFAULT_PORTS).
    port: int = 0
    #: Python logging level of the service's JSON logs (DEBUG, INFO, WARNING, ERROR).
    log_level: str = "INFO"

    # --- auth -------------------------------------------------------------------------------------------------------
    #: Local only: the HS256 key that signs and checks development tokens (public, refused outside ``local``).
    auth_signing_key: str = DEV_SIGNING_KEY
    #: The ``iss`` every token must carry; outside ``local``, your identity provider's issuer (required).
    auth_issuer: str = LOCAL_ISSUER
    #: The ``aud`` every token must carry; outside ``local``, the audience your identity provider issues (required).
    auth_audience: str = LOCAL_AUDIENCE
    #: In AWS, tokens are RS256 from an OIDC provider whose keys are published here.
    auth_jwks_url: str = ""
    #: A token whose key id is unknown re-fetches the JWKS (a key rotation) at most this often.
    auth_jwks_refresh_cooldown_s: float = Field(5.0, ge=0)

    #: Key for pseudonymising patient IDs in events (HMAC-SHA256). Refused at its default outside ``local``.
    pseudonym_key: str = "radloop-local-pseudonym-key"

    # --- telemetry ----------------------------------------------------------------------------------------------------
    #: OTLP/HTTP collector for traces and metrics; empty: traces go to JSON lines under var/traces and metrics are
    #: served at /metrics only.
    otel_exporter_otlp_endpoint: str = Field(
        "", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "RADLOOP_OTEL_EXPORTER_OTLP_ENDPOINT")
    )

    # --- consumer runtime ------------------------------------------------------------------------------------------
    #: Messages one consumer handles at once.
    consumer_concurrency: int = 8
    #: SQS long-poll wait of each receive (0 to 20 s).
    consumer_wait_time_s: int = 5
    #: A handled message's idempotency record is kept this long: a redelivery within it is skipped.
    idempotency_expiry_s: int = 3600
    #: A handler's INPROGRESS record goes stale this long after its last heartbeat (its process was killed).
    idempotency_inprogress_expiry_s: int = 120
    #: From SIGTERM to exit, the whole process (HTTP drain, in-flight messages, outbox flush) takes at most this
    #: long. The CDK app sets ECS's ``stopTimeout`` a few seconds above it (Fargate allows at most 120 s).
    drain_timeout_s: float = Field(30.0, gt=0, le=110)
    #: Every queue must ride out an outage of its dependencies this long before dead-lettering (checked at start-up).
    outage_tolerance_s: int = 600

    @model_validator(mode="before")
    @classmethod
    def _require_environment(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("environment"):
            raise ValueError("RADLOOP_ENVIRONMENT is required (local, dev or prod): a process never guesses where it "
                             "runs, because 'local' accepts tokens signed with the public development key")
        return data

    @model_validator(mode="after")
    def _refuse_insecure_defaults(self) -> Settings:
        if self.environment != "local":
            # Production trusts its identity provider only: all three must be the hospital's own values.
            for name, value, placeholder in (("RADLOOP_AUTH_JWKS_URL", self.auth_jwks_url, ""),
                                             ("RADLOOP_AUTH_ISSUER", self.auth_issuer, LOCAL_ISSUER),
                                             ("RADLOOP_AUTH_AUDIENCE", self.auth_audience, LOCAL_AUDIENCE)):
                if not value or value == placeholder or _is_placeholder(value):
                    raise ValueError(
                        f"environment={self.environment!r} needs {name} set to your identity provider's value "
                        f"(got {value!r}); issuer, audience and JWKS URL are required outside local"
                    )
            if not self.auth_jwks_url.startswith("https://"):
                raise ValueError(f"RADLOOP_AUTH_JWKS_URL must be an https:// URL outside local (got "
                                 f"{self.auth_jwks_url!r})")
            if self.pseudonym_key == "radloop-local-pseudonym-key":
                raise ValueError(
                    f"environment={self.environment!r} refuses the development pseudonym key: "
                    "set RADLOOP_PSEUDONYM_KEY to a secret"
                )
        return self

    @model_validator(mode="after")
    def _refuse_dead_lettering_timings(self) -> Settings:
        # A killed handler's message is received again (visibility timeout), finds its record INPROGRESS and waits
        # until the record is stale (the consumer hides it that long), then a third receive takes the work over. So
        # a queue needs 3 receives for a kill, and enough backoff to outlast an outage before the DLQ.
        if not 0 < self.idempotency_inprogress_expiry_s <= _SQS_MAX_VISIBILITY_S:
            raise ValueError(f"idempotency_inprogress_expiry_s={self.idempotency_inprogress_expiry_s} must be in "
                             f"1..{_SQS_MAX_VISIBILITY_S} s (SQS's longest visibility timeout)")
        for service, q in build_topology(self.prefix).queues.items():
            if q.max_receive_count < 3:
                raise ValueError(f"queue {q.name}: maxReceiveCount {q.max_receive_count} would dead-letter the message "
                                 "of a killed handler (it needs 3 receives: killed, waiting for the stale record, "
                                 "taken over)")
            if q.outage_tolerance_s() < self.outage_tolerance_s:
                raise ValueError(f"queue {q.name} ({service}) dead-letters after {q.outage_tolerance_s()} s of failing "
                                 f"deliveries, less than outage_tolerance_s={self.outage_tolerance_s}: raise its "
                                 "maxReceiveCount or backoff")
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
