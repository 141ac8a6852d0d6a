"""The collector's redaction processor: a second line of defence behind the services' own span scrubbing.

Every collector configuration radloop runs (the one compose.yaml mounts, which the ECS sidecar reuses with X-Ray
exporters) must pass every traces pipeline through the redaction processor before anything is exported. Its OTTL
statements are also checked for what they do: the regular expressions are applied here to sample attribute keys and
URLs (Python's ``re`` and the collector's RE2 agree on these simple patterns).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import REPO

REDACT = "transform/redact"
SHARED_CONFIG = REPO / "infra" / "otel-collector.yaml"


def _compose_collector_configs() -> list[Path]:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    out = []
    for name, svc in compose["services"].items():
        if "collector" not in str(svc.get("image", "")) and "collector" not in name:
            continue
        for vol in svc.get("volumes", []):
            host = vol.split(":", 1)[0]
            if host.endswith((".yaml", ".yml")):
                out.append((REPO / host).resolve())
    return out


def collector_configs() -> list[Path]:
    """Every collector configuration file in the repository's deployments (deduplicated)."""
    return sorted({SHARED_CONFIG.resolve(), *_compose_collector_configs()})


def _traces_pipelines(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pipes = cfg["service"]["pipelines"]
    return {n: p for n, p in pipes.items() if n == "traces" or n.startswith("traces/")}


def _statements(cfg: dict[str, Any], context: str) -> list[str]:
    proc = cfg["processors"][REDACT]
    return [s for group in proc["trace_statements"] if group["context"] == context for s in group["statements"]]


def _ottl_string(arg: str) -> str:
    """An OTTL string literal's value (``"..."`` with backslash escapes)."""
    assert arg.startswith('"') and arg.endswith('"'), arg
    return re.sub(r"\\(.)", r"\1", arg[1:-1])


def _apply(statements: list[str], attrs: dict[str, str]) -> dict[str, str]:
    """Apply the three OTTL functions the redaction uses, as the transform processor does, to one attribute map."""
    out = dict(attrs)
    for st in statements:
        if m := re.fullmatch(r'delete_key\(attributes, ("[^"]*")\)', st):
            out.pop(_ottl_string(m.group(1)), None)
        elif m := re.fullmatch(r'delete_matching_keys\(attributes, ("(?:[^"\\]|\\.)*")\)', st):
            pattern = re.compile(_ottl_string(m.group(1)))
            out = {k: v for k, v in out.items() if not pattern.fullmatch(k)}
        elif m := re.fullmatch(r'replace_pattern\(attributes\[("[^"]*")\], ("(?:[^"\\]|\\.)*"), ("[^"]*")\)', st):
            key = _ottl_string(m.group(1))
            if key in out:
                out[key] = re.sub(_ottl_string(m.group(2)), _ottl_string(m.group(3)), out[key])
        else:
            pytest.fail(f"unexpected statement in {REDACT}: {st}")
    return out


@pytest.mark.parametrize("path", collector_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_traces_pipeline_runs_the_redaction_processor_before_export(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    assert REDACT in cfg["processors"], f"{path}: no {REDACT} processor"
    pipelines = _traces_pipelines(cfg)
    assert pipelines, f"{path}: no traces pipeline"
    for name, pipe in pipelines.items():
        procs = pipe["processors"]
        assert REDACT in procs, f"{path}: pipeline {name} skips {REDACT}"
        # after the memory limiter (which must come first) and before batching and export
        if "memory_limiter" in procs:
            assert procs.index("memory_limiter") < procs.index(REDACT)
        if "batch" in procs:
            assert procs.index(REDACT) < procs.index("batch")


def test_redaction_strips_query_strings_and_phi_named_attributes() -> None:
    cfg = yaml.safe_load(SHARED_CONFIG.read_text())
    assert cfg["processors"][REDACT].get("error_mode") == "ignore", "a statement that fails must not drop the span"
    span = {
        "http.url": "https://radloop.h.org/dicomweb/studies?PatientName=DOE%5EJANE&token=abc",
        "url.full": "https://radloop.h.org/dicomweb/studies?PatientID=12345",
        "http.target": "/dicomweb/studies?PatientBirthDate=19700101",
        "url.query": "PatientName=DOE%5EJANE",
        "url.path": "/dicomweb/studies",
        "http.route": "/dicomweb/studies",
        "PatientName": "DOE^JANE",
        "dicom.PatientID": "12345",
        "radloop.patient_id": "12345",
        "query.PatientBirthDate": "19700101",
        "birth_date": "19700101",
        "radloop.study_uid": "1.2.3",
        "http.status_code": "200",
    }
    out = _apply(_statements(cfg, "span"), span)
    assert out == {
        "http.url": "https://radloop.h.org/dicomweb/studies",
        "url.full": "https://radloop.h.org/dicomweb/studies",
        "http.target": "/dicomweb/studies",
        "url.path": "/dicomweb/studies",
        "http.route": "/dicomweb/studies",
        "radloop.study_uid": "1.2.3",
        "http.status_code": "200",
    }
    # exceptions recorded as span events carry attributes too
    event = {"exception.type": "ValueError", "PatientName": "DOE^JANE", "patient": "x"}
    assert _apply(_statements(cfg, "spanevent"), event) == {"exception.type": "ValueError"}
