"""The deploy parameters a hospital must supply (CDK context): refused when missing, placeholders or unsafe.

These run without synthesizing: ``params_from_context`` is where the app refuses bad input, before any resource
exists, so a misconfigured ``cdk deploy`` fails with a sentence that names the parameter.
"""

from __future__ import annotations

import re

import pytest
import yaml

from infra.radloop_infra.config import DeployParams, params_from_context
from tests.infra.conftest import IDP_CONTEXT, PACS_CIDRS, REPO

REQUIRED_AUTH = ("auth_jwks_url", "auth_issuer", "auth_audience")


def _ctx(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"env": "prod", **IDP_CONTEXT, "pacs_cidrs": PACS_CIDRS}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _params(**overrides: object) -> DeployParams:
    return params_from_context(_ctx(**overrides).get)


def test_complete_context_is_accepted_and_carried_through() -> None:
    p = _params()
    assert (p.auth_jwks_url, p.auth_issuer, p.auth_audience) == tuple(IDP_CONTEXT[k] for k in REQUIRED_AUTH)
    assert p.pacs_cidrs == tuple(PACS_CIDRS.split(","))


@pytest.mark.parametrize("missing", REQUIRED_AUTH)
def test_each_identity_provider_parameter_is_required(missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        _params(**{missing: None})
    with pytest.raises(ValueError, match=missing):
        _params(**{missing: "  "})


@pytest.mark.parametrize(("name", "value"), [
    ("auth_jwks_url", "https://login.example-hospital.org/.well-known/jwks.json"),  # the old default
    ("auth_jwks_url", "https://idp.example.org/jwks"),
    ("auth_issuer", "https://changeme.hospital.org"),
    ("auth_issuer", "radloop-local"),  # the local issuer, refused by the services outside local
    ("auth_audience", "radloop"),  # the local audience
    ("auth_audience", "<placeholder>"),
    ("auth_audience", "TODO"),
])
def test_placeholder_identity_provider_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        _params(**{name: value})


def test_the_jwks_url_must_be_https() -> None:
    with pytest.raises(ValueError, match="auth_jwks_url.*https"):
        _params(auth_jwks_url="http://idp.hospital.internal/jwks")


def test_deploy_params_have_no_identity_provider_defaults() -> None:
    """No default a deployer could forget to override (the old JWKS default was a plausible-looking URL)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(DeployParams)}
    for name in REQUIRED_AUTH:
        assert fields[name].default is dataclasses.MISSING, name


@pytest.mark.parametrize("bad", ["0.0.0.0/0", "10.1.0.0/16,0.0.0.0/0", "::/0", "0.0.0.0/1"])
def test_pacs_cidrs_refuse_the_whole_internet(bad: str) -> None:
    with pytest.raises(ValueError, match="pacs_cidrs"):
        _params(pacs_cidrs=bad)


@pytest.mark.parametrize("bad", ["10.1.2.3/16", "not-a-cidr", "10.1.0.0/33"])
def test_pacs_cidrs_must_be_networks(bad: str) -> None:
    with pytest.raises(ValueError, match="pacs_cidrs"):
        _params(pacs_cidrs=bad)


def test_pacs_cidrs_are_required_while_dimse_is_exposed() -> None:
    with pytest.raises(ValueError, match="pacs_cidrs"):
        _params(pacs_cidrs=None)
    assert _params(pacs_cidrs=["10.9.8.0/24"]).pacs_cidrs == ("10.9.8.0/24",)  # a JSON list in cdk.json works too


def test_the_deploy_workflow_passes_every_required_parameter_from_repository_settings() -> None:
    deploy = yaml.safe_load((REPO / ".github/workflows/deploy.yml").read_text())
    job = deploy["jobs"]["deploy"]
    step = next(s for s in job["steps"] if "cdk deploy" in s.get("name", ""))
    for name in (*REQUIRED_AUTH, "pacs_cidrs"):
        # passed as -c name="$VAR", VAR set in the job's env from a repository variable or secret (never inline
        # in run:, which zizmor and test_lint refuse as template injection)
        m = re.search(rf'-c {name}="\$(\w+)"', step["run"])
        assert m, f"deploy.yml does not pass -c {name}"
        source = job["env"].get(m.group(1), "")
        assert re.fullmatch(r"\$\{\{ (vars|secrets)\.\w+ \}\}", source), (name, source)


def test_docs_deploy_names_every_required_parameter() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text()
    for name in (*REQUIRED_AUTH, "pacs_cidrs"):
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{name}`")), "")
        assert "required" in row.lower(), f"docs/deploy.md: no parameter row saying {name} is required"


# -- the image store (issue 22) ---------------------------------------------------------------------------------------
def test_the_image_store_defaults_to_radloops_own() -> None:
    assert _params().image_store == "radloop" and not _params().healthimaging
    assert _params(image_store="").image_store == "radloop"  # the deploy workflow passes an unset variable as ""


@pytest.mark.parametrize("value", ["healthimaging", "HealthImaging", " healthimaging "])
def test_healthimaging_is_chosen_with_the_image_store_parameter(value: str) -> None:
    p = _params(image_store=value)
    assert p.image_store == "healthimaging" and p.healthimaging


@pytest.mark.parametrize("bad", ["s3", "ahi", "radloop,healthimaging", "orthanc"])
def test_an_unknown_image_store_is_refused_with_the_choices(bad: str) -> None:
    with pytest.raises(ValueError, match=r"image_store.*radloop, healthimaging"):
        _params(image_store=bad)


def test_the_deploy_workflow_and_docs_offer_the_image_store() -> None:
    deploy = yaml.safe_load((REPO / ".github/workflows/deploy.yml").read_text())
    job = deploy["jobs"]["deploy"]
    step = next(s for s in job["steps"] if "cdk deploy" in s.get("name", ""))
    m = re.search(r'-c image_store="\$(\w+)"', step["run"])
    assert m and re.fullmatch(r"\$\{\{ vars\.\w+ \}\}", job["env"][m.group(1)])
    doc = (REPO / "docs" / "deploy.md").read_text()
    row = next((line for line in doc.splitlines() if line.startswith("| `image_store`")), "")
    assert "`radloop`" in row and "`healthimaging`" in row, "docs/deploy.md: no image_store row naming both stores"


def test_the_public_base_url_is_an_https_origin() -> None:
    assert _params().public_base_url == ""  # then the stack names the ALB's DNS name
    assert _params(public_base_url="https://pacs.example.org/").public_base_url == "https://pacs.example.org"
    assert _params(public_base_url="https://pacs.example.org:8443/radloop").public_base_url == \
        "https://pacs.example.org:8443/radloop"
    for bad in ("http://pacs.example.org", "pacs.example.org", "https://", "https://pacs.example.org/?a=1",
                "https://user@pacs.example.org"):
        with pytest.raises(ValueError, match="public_base_url"):
            _params(public_base_url=bad)


def test_the_training_image_tag_is_an_image_tag() -> None:
    assert _params().training_image_tag == ""  # then triage re-scores in its tasks only
    assert _params(training_image_tag="3f2c1ab").training_image_tag == "3f2c1ab"
    for bad in ("latest tag", "-x", "a" * 129, "x:y"):
        with pytest.raises(ValueError, match="training_image_tag"):
            _params(training_image_tag=bad)
