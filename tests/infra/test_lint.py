"""Dockerfiles (hadolint + structure) and GitHub workflows (zizmor + structure): they cannot run here, so lint them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.topology import SERVICES

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def _bin(name: str) -> str:
    p = BIN / name
    found = str(p) if p.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make setup` (the infra extra ships it as a wheel)")
    return found


DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage"
    # the Python stages are slim; the viewer is built in a node stage whose output only is copied
    assert all("slim" in f for f in froms), froms
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK\s+", text, re.M)
    assert "COPY --from=build" in text
    # one recipe for every service: chosen by the SERVICE build argument, run as services.<SERVICE>
    assert re.search(r"^ARG SERVICE\b", text, re.M)
    assert "COPY services/${SERVICE} " in text
    assert "RADLOOP_SERVICE_NAME=${SERVICE}" in text and 'python -m \\"services.$RADLOOP_SERVICE_NAME\\"' in text


def test_every_file_the_dockerfile_copies_from_the_context_is_allowed_by_dockerignore() -> None:
    """.dockerignore is an allow-list: a COPY of a path it does not let through fails only at build time (no Docker
    engine here), so check each one. The gateway's OHIF stage is among them (its lock, config and fetch script)."""
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copies = re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)$", DOCKERFILE.read_text(), re.M)
    sources = [src for line in copies for src in line.split()[:-1]]
    assert "scripts/fetch_ohif.py" in sources and "ohif/ohif.lock.json" in sources
    for src in sources:
        src = src.replace("${SERVICE}", "triage").rstrip("/")
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is not allowed by .dockerignore"
        assert (REPO / src).exists(), src
    # the gateway's image gets the OHIF build the same way `make ohif` makes it
    text = DOCKERFILE.read_text()
    assert "python scripts/fetch_ohif.py" in text and "COPY --from=ohif /src/ohif/dist ./ohif/dist" in text


def test_every_service_has_a_package_the_dockerfile_can_copy() -> None:
    for service in SERVICES:
        assert (REPO / "services" / service / "__main__.py").exists(), service
    assert not list(REPO.glob("services/*/Dockerfile")), "a per-service Dockerfile came back: use ARG SERVICE"


def test_hadolint_passes_on_the_service_dockerfile() -> None:
    proc = subprocess.run([_bin("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_finds_no_error_in_the_training_dockerfile() -> None:
    """The GPU training image (training/Dockerfile, from the training package) that the deploy pushes."""
    training = REPO / "training" / "Dockerfile"
    proc = subprocess.run([_bin("hadolint"), "--failure-threshold", "error", str(training)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_nothing_in_the_workflows() -> None:
    proc = subprocess.run([_bin("zizmor"), "--offline", "--format", "plain", str(REPO / ".github" / "workflows")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_exist_and_are_pinned_and_least_privilege() -> None:
    assert {w.stem for w in WORKFLOWS} >= {"test", "security", "deploy"}
    for wf in WORKFLOWS:
        doc = yaml.safe_load(wf.read_text())
        assert doc["permissions"] == {"contents": "read"}, f"{wf.name}: top-level permissions must be read-only"
        for name, job in doc["jobs"].items():
            perms = job.get("permissions", {})
            assert set(perms.values()) <= {"read", "write"}
            writes = {k for k, v in perms.items() if v == "write"}
            assert writes <= {"id-token"}, f"{wf.name}/{name} writes {writes}"
            for step in job["steps"]:
                if "uses" in step:
                    assert SHA_PIN.match(step["uses"]), f"{wf.name}: {step['uses']} is not pinned by SHA"
                if "with" in step and "persist-credentials" in step["with"]:
                    assert step["with"]["persist-credentials"] is False
                if "run" in step:
                    assert "${{" not in step["run"], f"{wf.name}: expression inside run: (template injection)"


def test_test_workflow_runs_make_test_and_deploy_uses_oidc_with_prod_approval() -> None:
    test = yaml.safe_load((REPO / ".github/workflows/test.yml").read_text())
    assert any(s.get("run") == "make test" for s in test["jobs"]["test"]["steps"])
    deploy = yaml.safe_load((REPO / ".github/workflows/deploy.yml").read_text())
    job = deploy["jobs"]["deploy"]
    assert job["permissions"]["id-token"] == "write"
    creds = next(s for s in job["steps"] if "configure-aws-credentials" in s.get("uses", ""))
    assert "role-to-assume" in creds["with"] and "aws-access-key-id" not in creds["with"]
    # Approval for prod comes from the GitHub environment's required reviewers.
    assert "environment" in job and "prod" in deploy[True]["workflow_dispatch"]["inputs"]["environment"]["options"]
    text = (REPO / ".github/workflows/deploy.yml").read_text()
    assert "cdk deploy" in text or "aws-cdk@" in text
    security = (REPO / ".github/workflows/security.yml").read_text()
    for tool in ("hadolint", "zizmor", "checkov", "cdk-nag"):
        assert tool in security
