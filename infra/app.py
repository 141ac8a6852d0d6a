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
    return app, stack


if __name__ == "__main__":
    the_app, _stack = build_app()
    the_app.synth()
    # `cdk synth -c nag=1`: fail on any unacknowledged HIPAA or SQS finding (as tests/infra/test_checks.py does).
    if the_app.node.try_get_context("nag"):
        from infra.radloop_infra.checks import nag_findings

        findings = nag_findings(the_app)
        for rule, paths in findings:
            sys.stderr.write(f"cdk-nag {rule}: {', '.join(paths)}\n")
        sys.exit(1 if findings else 0)
