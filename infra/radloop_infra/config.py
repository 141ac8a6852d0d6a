"""The two deployment environments, ``dev`` and ``prod``, chosen with ``cdk synth -c env=dev|prod``.

Everything that differs between them is here, as data: sizes, retention, Spot capacity, removal policies.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.settings import LOCAL_AUDIENCE, LOCAL_ISSUER, _is_placeholder
from shared.topology import Topology

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


def imports_expire_days(topology: Topology) -> int:
    """Days after which a drop-folder object (``imports/``) expires: one day after the last DLQ that can still hold
    its S3 notification has dropped it, so a redrive always finds the file.

    The notification reaches the queue of the S3-imports rule and, when delivery fails, that queue's DLQ; SQS keeps
    a dead-lettered message for the DLQ's retention counted from its first enqueue. EventBridge's own rule DLQ
    (:data:`RULE_DLQ_RETENTION_DAYS`) holds notifications it could not deliver at all.
    """
    retention_s = [RULE_DLQ_RETENTION_DAYS * 86_400]
    for rule in topology.rules:
        if rule.event_pattern.get("source") == ["aws.s3"]:
            retention_s.append(topology.queues[rule.target_queue].dlq_retention_s)
    return math.ceil(max(retention_s) / 86_400) + 1


#: Retention of the EventBridge rule DLQ (events the bus could not deliver to a queue), in days.
RULE_DLQ_RETENTION_DAYS = 14

#: Where radloop keeps images (deploy parameter ``image_store``; docs/architecture.md, "Build or buy"): its own
#: lossless HTJ2K store on S3 + DynamoDB (the default), or AWS HealthImaging. The services read the same choice from
#: RADLOOP_IMAGE_STORE, which the stack sets only for ``healthimaging`` (a ``radloop`` deployment is unchanged).
IMAGE_STORES: tuple[str, ...] = ("radloop", "healthimaging")
DEFAULT_IMAGE_STORE = "radloop"


@dataclass(frozen=True)
class DeployParams:
    """What the person deploying supplies (CDK context). The identity provider and the PACS networks have no
    defaults: :func:`params_from_context` refuses a deployment without them."""

    env: EnvConfig
    prefix: str
    account: str
    region: str
    #: OIDC JWKS URL, issuer (``iss``) and audience (``aud``) of the hospital's identity provider
    #: (RADLOOP_AUTH_JWKS_URL, RADLOOP_AUTH_ISSUER, RADLOOP_AUTH_AUDIENCE). Outside local the services refuse to start
    #: without all three, so they are required here too, and placeholders are refused at synth time.
    auth_jwks_url: str
    auth_issuer: str
    auth_audience: str
    #: CIDR ranges of the PACS allowed to send over DIMSE: the only sources the DIMSE NLB (DICOM TLS) admits.
    pacs_cidrs: tuple[str, ...]
    #: ACM certificate for the ALB's HTTPS listener (a CloudFormation parameter when empty).
    certificate_arn: str = ""
    #: The HTTPS origin clients reach the ALB at (``https://pacs.example.org``: the name on its certificate). The
    #: ingestion and gateway tasks name it in the URLs of their responses (RADLOOP_PUBLIC_BASE_URL; an ALB is not a
    #: proxy whose forwarded host they may believe, shared/forwarded.py). Empty: ``https://`` and the ALB's DNS name.
    public_base_url: str = ""
    #: The tag of the training image in the stack's training repository (the deploy workflow pushes it with the
    #: commit). Triage serves Batch Transform re-scoring jobs with it; empty: the tasks re-score every pass themselves.
    training_image_tag: str = ""
    #: CIDR ranges of the hospital network allowed to reach the ALB (over VPN or Direct Connect).
    client_cidrs: tuple[str, ...] = ("10.0.0.0/8",)
    vpc_cidr: str = "10.42.0.0/16"
    alarm_email: str = ""
    #: Calling AE titles of the PACS allowed to send over DIMSE (RADLOOP_DIMSE_ALLOWED_CALLING_AES; never "*").
    dimse_calling_aes: tuple[str, ...] = ("PACS",)
    #: A pipeline definition JSON file (``python -m training.pipeline definition --out FILE``) to upsert.
    pipeline_definition: str = ""
    #: One of :data:`IMAGE_STORES`: ``healthimaging`` adds the datastore, its import role, the import-job event rule
    #: and the grants (infra/radloop_infra/healthimaging.py); ``radloop`` synthesizes exactly what it did before.
    image_store: str = DEFAULT_IMAGE_STORE
    #: Calling AE titles of the workstations allowed to query and retrieve (RADLOOP_QR_ALLOWED_CALLING_AES). Empty (the
    #: default): the Q/R SCP is not exposed. Set: the interop task runs it and the NLB gets a second DICOM TLS listener
    #: (compute.QR_TLS_PORT) that admits ``qr_cidrs`` only.
    qr_calling_aes: tuple[str, ...] = ()
    #: Networks of those workstations (required with ``qr_calling_aes``; validated like ``pacs_cidrs``).
    qr_cidrs: tuple[str, ...] = ()
    #: C-MOVE destinations, AE title -> (IP address, port, TLS) (RADLOOP_QR_MOVE_DESTINATIONS); each gets one egress
    #: rule from the interop task, so an address is required (a security group cannot name a host).
    qr_move_destinations: tuple[tuple[str, str, int, bool], ...] = ()

    @property
    def qr(self) -> bool:
        """Whether the DIMSE Query/Retrieve SCP is exposed."""
        return bool(self.qr_calling_aes)

    @property
    def healthimaging(self) -> bool:
        """Whether images live in AWS HealthImaging."""
        return self.image_store == "healthimaging"


#: Identity-provider parameters and the local value each must not be (the services' own placeholders).
_AUTH_PARAMS: dict[str, str] = {"auth_jwks_url": "", "auth_issuer": LOCAL_ISSUER, "auth_audience": LOCAL_AUDIENCE}
#: Networks too wide to be "the PACS": anything that contains a large part of the address space.
_MIN_PACS_PREFIX = {4: 8, 6: 32}


def _list(value: Any) -> tuple[str, ...]:
    """A context list: a JSON list (cdk.json) or a comma-separated string (``-c key=a,b``)."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(str(x).strip() for x in items if str(x).strip())


def _auth_param(get: Any, name: str) -> str:
    value = str(get(name) or "").strip()
    local = _AUTH_PARAMS[name]
    if not value:
        raise ValueError(f"deploy parameter {name} is required (-c {name}=...): the identity provider's value; the "
                         "services refuse to start without issuer, audience and JWKS URL outside local")
    if value == local or _is_placeholder(value) or value.startswith("<"):
        raise ValueError(f"deploy parameter {name}={value!r} is a placeholder: set your identity provider's value")
    if name == "auth_jwks_url" and not value.startswith("https://"):
        raise ValueError(f"deploy parameter auth_jwks_url must be an https:// URL (got {value!r})")
    return value


def _pacs_cidrs(get: Any) -> tuple[str, ...]:
    return _cidrs(get, "pacs_cidrs", "DIMSE is exposed", "the networks of the PACS allowed to send to the DIMSE load "
                  "balancer")


def _cidrs(get: Any, name: str, when: str, what: str) -> tuple[str, ...]:
    """A required list of networks, each a network address no wider than :data:`_MIN_PACS_PREFIX`."""
    cidrs = _list(get(name))
    if not cidrs:
        raise ValueError(f"deploy parameter {name} is required while {when} (-c {name}=CIDR,...): {what}")
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"deploy parameter {name}: {cidr!r} is not a network address ({exc})") from None
        if net.prefixlen < _MIN_PACS_PREFIX[net.version]:
            raise ValueError(f"deploy parameter {name}: {cidr} admits far more than a PACS or its workstations "
                             f"(0.0.0.0/0 and anything wider than /{_MIN_PACS_PREFIX[net.version]} are refused)")
    return cidrs


def _qr(get: Any) -> dict[str, Any]:
    """The Q/R parameters: none unless ``qr_calling_aes`` is set; then networks and C-MOVE destinations, checked."""
    aes = _list(get("qr_calling_aes"))
    if not aes:
        if get("qr_cidrs") or get("qr_move_destinations"):
            raise ValueError("qr_cidrs and qr_move_destinations need qr_calling_aes (the workstations' AE titles): "
                             "without it the Q/R SCP is not exposed")
        return {}
    if "*" in aes:
        raise ValueError("qr_calling_aes must list the workstations' AE titles; a wildcard '*' is refused outside "
                         "local")
    raw = get("qr_move_destinations") or {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"deploy parameter qr_move_destinations is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError('deploy parameter qr_move_destinations must be a JSON object: {"AE": {"host": "10.1.2.3", '
                         '"port": 104, "tls": false}}')
    dests = []
    for ae, d in sorted(raw.items()):
        try:
            host, port, tls = str(ipaddress.ip_address(d["host"])), int(d["port"]), d.get("tls", False)
            if not isinstance(tls, bool):  # "false" would be truthy: only JSON true/false
                raise ValueError(f"tls must be true or false, not {tls!r}")
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"deploy parameter qr_move_destinations[{ae!r}] needs an IP address \"host\" and a "
                             f"\"port\" ({type(exc).__name__}: {exc})") from None
        if not 0 < port < 65536 or not 0 < len(ae) <= 16:
            raise ValueError(f"deploy parameter qr_move_destinations[{ae!r}]: an AE title of 1-16 characters and a "
                             "port in 1-65535")
        dests.append((ae, host, port, tls))
    return {"qr_calling_aes": aes, "qr_move_destinations": tuple(dests),
            "qr_cidrs": _cidrs(get, "qr_cidrs", "the Q/R SCP is exposed", "the networks of the workstations allowed "
                               "to query and retrieve")}


def _public_base_url(get: Any) -> str:
    value = str(get("public_base_url") or "").strip().rstrip("/")
    if not value:
        return ""
    u = urlsplit(value)
    if u.scheme != "https" or not u.hostname or u.query or u.fragment or "@" in u.netloc:
        raise ValueError(f"deploy parameter public_base_url={value!r} must be https://host[:port][/path], the origin "
                         "clients reach the load balancer at (the name on its certificate)")
    return value


def _training_image_tag(get: Any) -> str:
    value = str(get("training_image_tag") or "").strip()
    if value and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
        raise ValueError(f"deploy parameter training_image_tag={value!r} is not an image tag (letters, digits, '_', "
                         "'.', '-'; at most 128)")
    return value


def _image_store(get: Any) -> str:
    value = str(get("image_store") or DEFAULT_IMAGE_STORE).strip().lower()
    if value not in IMAGE_STORES:
        raise ValueError(f"deploy parameter image_store={value!r} is not an image store: expected one of "
                         f"{', '.join(IMAGE_STORES)} (-c image_store=healthimaging)")
    return value


def params_from_context(get: Any) -> DeployParams:
    """Build :class:`DeployParams` from ``node.try_get_context``-like ``get``; a ValueError names a missing or
    unsafe parameter."""
    env = env_config(get("env") or "dev")
    aes = _list(get("dimse_calling_aes") or "PACS")
    if "*" in aes:
        raise ValueError("dimse_calling_aes must list the PACS AE titles; a wildcard '*' is refused outside local")
    return DeployParams(
        env=env,
        prefix=get("prefix") or f"radloop-{env.name}",
        account=str(get("account") or "111111111111"),
        region=get("region") or "us-east-1",
        auth_jwks_url=_auth_param(get, "auth_jwks_url"),
        auth_issuer=_auth_param(get, "auth_issuer"),
        auth_audience=_auth_param(get, "auth_audience"),
        pacs_cidrs=_pacs_cidrs(get),
        certificate_arn=get("certificate_arn") or "",
        public_base_url=_public_base_url(get),
        training_image_tag=_training_image_tag(get),
        client_cidrs=_list(get("client_cidrs") or "10.0.0.0/8"),
        vpc_cidr=get("vpc_cidr") or "10.42.0.0/16",
        alarm_email=get("alarm_email") or "",
        dimse_calling_aes=aes,
        pipeline_definition=get("pipeline_definition") or "",
        image_store=_image_store(get),
        **_qr(get),
    )
