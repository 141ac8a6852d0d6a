#!/usr/bin/env python3
"""The radloop CDK app: ``cdk synth -c env=dev`` (or prod). Context keys: see infra/radloop_infra/config.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: shared/, radloop/, infra/
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402

from infra.radloop_infra.config import params_from_context  # noqa: E402
from infra.radloop_infra.stack import RadloopStack  # noqa: E402


def build_app(context: dict[str, object] | None = None, outdir: str | None = None) -> tuple[cdk.App, RadloopStack]:
    """The app with one stack for the environment named by the ``env`` context (default ``dev``)."""
    base = json.loads((Path(__file__).with_name("cdk.json")).read_text())["context"]
    app = cdk.App(context={**base, **(context or {})}, outdir=outdir)
    params = params_from_context(app.node.try_get_context)
    stack = RadloopStack(app, f"Radloop{params.env.name.capitalize()}", params=params)
    if app.node.try_get_context("nag"):
        # `cdk synth -c nag=1` fails on any unacknowledged HIPAA finding. The AwsSolutions SQS rules cannot be
        # selected alone from Python (the rule functions are not exported), so tests/infra/test_checks.py runs the
        # whole AwsSolutions pack and keeps its SQS findings.
        from cdk_nag import HIPAASecurityChecks

        cdk.Validations.of(app).add_plugins(HIPAASecurityChecks(app))
    return app, stack


if __name__ == "__main__":
    build_app()[0].synth()
