"""The synthesized templates pass cfn-lint (no errors), checkov (no failures) and cdk-nag (HIPAA + AwsSolutions SQS).

Three templates: dev and prod with radloop's own image store, and prod with AWS HealthImaging
(``image_store=healthimaging``). cfn-lint and checkov each take all three in one run, so the third costs a synthesis
and little else.

Accepted findings live in infra/radloop_infra/suppressions.py, each justified in docs/security.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.radloop_infra.suppressions import SUPPRESSIONS
from tests.infra.conftest import ENVS, HEALTHIMAGING, REPO, Synth

CHECKOV = REPO / ".venv-tools" / "bin" / "checkov"


def _tool(name: str) -> str:
    venv_bin = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make setup` (it installs the infra extra)")
    return found


@pytest.fixture(scope="module")
def synths(synth, synth_healthimaging) -> dict[str, Synth]:
    """Every synthesized template: both environments, and prod with HealthImaging."""
    return {**synth, HEALTHIMAGING: synth_healthimaging}


@pytest.fixture(scope="module")
def linters(synths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """cfn-lint and checkov started together on every template (each is single-threaded: they overlap)."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: `make setup` creates the tools venv (checkov pins boto3 apart)")
    only_templates = tmp_path_factory.mktemp("templates")
    for name, s in synths.items():  # only the templates (asset folders hold Dockerfiles, checked by hadolint instead)
        shutil.copy(s.template_path, only_templates / f"{name}.template.json")
    paths = [str(s.template_path) for s in synths.values()]
    procs = {
        "cfn-lint": subprocess.Popen([_tool("cfn-lint"), "--format", "json", *paths], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True),
        "checkov": subprocess.Popen([str(CHECKOV), "--skip-download", "-d", str(only_templates), "--framework",
                                     "cloudformation", "--compact", "-o", "json"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True),
    }
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _output(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=300)
    assert out.strip(), err[-2000:]
    return out


def test_cfn_lint_reports_no_errors(linters, synths) -> None:
    findings = json.loads(_output(linters["cfn-lint"]))
    errors = [f for f in findings if f["Level"] == "Error"]
    assert not errors, json.dumps(errors, indent=1)[:4000]
    # the HealthImaging template was among those linted, with its datastore
    assert "AWS::HealthImaging::Datastore" in synths[HEALTHIMAGING].template_path.read_text()


def test_checkov_reports_no_failures(linters) -> None:
    reports = json.loads(_output(linters["checkov"]))
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(c["check_id"], c["file_path"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, failed
    checked = {c["file_path"].rsplit("/", 1)[-1] for r in reports for c in r["results"]["passed_checks"]}
    assert f"{HEALTHIMAGING}.template.json" in checked, f"checkov did not check the HealthImaging template: {checked}"
    assert sum(r["summary"]["passed"] for r in reports) > 300
    skipped = {c["check_id"] for r in reports for c in r["results"].get("skipped_checks", [])}
    assert sum(r["summary"]["skipped"] for r in reports) > 0, "the declared checkov skips were not applied"
    declared = {s.rule for s in SUPPRESSIONS if s.tool == "checkov"}
    assert skipped <= declared, f"skips not declared in suppressions.py: {skipped - declared}"


@pytest.mark.parametrize("name", [*ENVS, HEALTHIMAGING])
def test_cdk_nag_hipaa_and_sqs_rules_have_no_unsuppressed_findings(synths, name) -> None:
    from infra.radloop_infra.checks import nag_findings

    findings = nag_findings(synths[name].app)
    assert not findings, findings


def test_the_nag_rules_used_do_catch_a_bad_queue_and_bucket() -> None:
    """Negative control: the same packs flag an unencrypted queue without DLQ and an unencrypted bucket."""
    import aws_cdk as cdk
    from aws_cdk import aws_s3 as s3
    from aws_cdk import aws_sqs as sqs
    app = cdk.App()
    stack = cdk.Stack(app, "Bad", env=cdk.Environment(account="111111111111", region="us-east-1"))
    sqs.Queue(stack, "Plain", encryption=sqs.QueueEncryption.UNENCRYPTED)
    s3.Bucket(stack, "Open", encryption=s3.BucketEncryption.UNENCRYPTED)
    from infra.radloop_infra.checks import nag_findings

    rules = {rule for rule, _paths in nag_findings(app)}
    assert {"AwsSolutions-SQS2", "AwsSolutions-SQS3", "AwsSolutions-SQS4"} <= rules
    assert "HIPAA.Security-S3BucketSSLRequestsOnly" in rules and "HIPAA.Security-S3DefaultEncryptionKMS" in rules
    assert not any(r.startswith("AwsSolutions-") and not r.startswith("AwsSolutions-SQS") for r in rules)


def test_every_suppression_is_justified_in_docs_security() -> None:
    doc = (REPO / "docs" / "security.md").read_text()
    for s in SUPPRESSIONS:
        assert s.rule in doc, f"{s.tool} {s.rule} is suppressed in infra but not justified in docs/security.md"
        assert len(s.reason) > 40
