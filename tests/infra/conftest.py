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


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Synth]:
    pytest.importorskip("aws_cdk", reason="infra extra not installed (pip install -e '.[infra]')")
    from infra.app import build_app

    base = tmp_path_factory.mktemp("cdk")
    definition = _minimal_pipeline_definition(base / "pipeline.json")
    out: dict[str, Synth] = {}
    for env in ENVS:
        outdir = base / env
        context = {"env": env, "pipeline_definition": str(definition), **IDP_CONTEXT,
                   "client_cidrs": CLIENT_CIDRS, "pacs_cidrs": PACS_CIDRS}
        app, stack = build_app(context, outdir=str(outdir))
        app.synth()
        tpath = outdir / f"{stack.stack_name}.template.json"
        out[env] = Synth(env, app, stack, outdir, tpath, json.loads(tpath.read_text()))
    return out
