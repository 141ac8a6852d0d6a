"""Synthesize the CDK app once per test session, for both environments, and share the templates.

Synthesis is the expensive step (about 10 s of CPU per environment), so every infra test reads these results.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

ENVS = ("dev", "prod")
REPO = Path(__file__).resolve().parents[2]
#: The identity provider a deployer must name (required deploy parameters; placeholders are refused).
IDP_CONTEXT = {"auth_jwks_url": "https://idp.hospital.internal/.well-known/jwks.json",
               "auth_issuer": "https://idp.hospital.internal", "auth_audience": "radloop-api"}
#: The hospital network reaching the ALB, and the PACS (a narrower, different range) reaching the DIMSE NLB, so the
#: tests can tell which one each load balancer admits.
CLIENT_CIDRS = "10.10.0.0/16,10.20.0.0/16"
PACS_CIDRS = "10.77.1.0/24,10.77.2.10/32"


def settings_class(service: str) -> type[Settings]:
    """The service's settings class (a Settings subclass in services/<name>/settings.py) or the shared one."""
    try:
        mod = importlib.import_module(f"services.{service}.settings")
    except ModuleNotFoundError:
        return Settings
    classes = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, Settings)]
    return max(classes, key=lambda c: len(c.__mro__))


#: What a CloudFormation token in a task's environment resolves to at deploy time, in the shape its setting checks.
_STAND_INS = {
    "RADLOOP_PUBLIC_BASE_URL": "https://internal-radloop-alb-123.eu-central-1.elb.amazonaws.com",
    "RADLOOP_HEALTHIMAGING_DATASTORE_ID": "0" * 32,  # 32 lower-case hex characters
    "RADLOOP_TRIAGE_TRANSFORM_IMAGE_URI": "111111111111.dkr.ecr.eu-central-1.amazonaws.com/radloop-training:abc1234",
}


def resolved(name: str, value: Any) -> str:
    """A task environment value as the task would see it: strings as they are, tokens by a stand-in."""
    return value if isinstance(value, str) else _STAND_INS.get(name, "arn:aws:iam::111111111111:role/resolved")


def accepted_env_names(cls: type[Settings]) -> set[str]:
    names = set()
    for field, info in cls.model_fields.items():
        names.add(f"RADLOOP_{field.upper()}")
        alias = info.validation_alias
        for choice in getattr(alias, "choices", []) or []:
            names.add(str(choice).upper())
    return names


@dataclass
class Synth:
    env: str
    app: Any
    stack: Any
    outdir: Path
    template_path: Path
    template: dict[str, Any]

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.template["Resources"]

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == rtype}


def _minimal_pipeline_definition(path: Path) -> Path:
    """A small, valid pipeline definition, standing in for ``python -m training.pipeline definition`` output."""
    path.write_text(json.dumps({
        "Version": "2020-12-01",
        "Metadata": {},
        "Parameters": [{"Name": "ManifestUri", "Type": "String"}],
        "Steps": [{"Name": "Fail", "Type": "Fail", "Arguments": {"ErrorMessage": "placeholder"}}],
    }))
    return path


def _synth(base: Path, name: str, env: str, **context: str) -> Synth:
    from infra.app import build_app

    outdir = base / name
    definition = base / "pipeline.json"
    if not definition.exists():
        _minimal_pipeline_definition(definition)
    ctx = {"env": env, "pipeline_definition": str(definition), **IDP_CONTEXT,
           "client_cidrs": CLIENT_CIDRS, "pacs_cidrs": PACS_CIDRS, **context}
    app, stack = build_app(ctx, outdir=str(outdir))
    app.synth()
    tpath = outdir / f"{stack.stack_name}.template.json"
    return Synth(env, app, stack, outdir, tpath, json.loads(tpath.read_text()))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Synth]:
    """Both environments with radloop's own image store (the default)."""
    pytest.importorskip("aws_cdk", reason="infra extra not installed (pip install -e '.[infra]')")
    base = tmp_path_factory.mktemp("cdk")
    return {env: _synth(base, env, env) for env in ENVS}


#: The key of the HealthImaging synthesis next to ENVS' (``image_store=healthimaging``, issue 22). One environment
#: only: prod, the stricter one (retained data, seven-year logs); what differs between environments is covered by ENVS.
#: It also exposes the Query/Retrieve SCP (QR_CONTEXT), the other optional part, so one more synthesis covers both.
HEALTHIMAGING = "prod-healthimaging"
#: The training image the deploy workflow pushed (triage's Batch Transform jobs serve with it); the HealthImaging
#: synthesis names one, the others do not.
TRAINING_IMAGE_TAG = "abc1234"
#: The workstations allowed to query and retrieve, their network (neither the PACS's nor the clients'), and one C-MOVE
#: destination.
QR_CONTEXT = {"training_image_tag": TRAINING_IMAGE_TAG, "qr_calling_aes": "WS_READ1,WS_READ2", "qr_cidrs": "10.88.0.0/24",
              "qr_move_destinations": json.dumps({"WS_READ1": {"host": "10.88.0.5", "port": 11112, "tls": True}})}


@pytest.fixture(scope="session")
def synth_healthimaging(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """prod with AWS HealthImaging as the image store (``-c image_store=healthimaging``) and the Q/R SCP exposed."""
    pytest.importorskip("aws_cdk", reason="infra extra not installed (pip install -e '.[infra]')")
    return _synth(tmp_path_factory.mktemp("cdk-healthimaging"), HEALTHIMAGING, "prod", image_store="healthimaging",
                  **QR_CONTEXT)
