"""Which deployment the operator's HTTP commands talk to when no --url is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radloop.ops.client import LOCAL_URL, resolve_url


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("RADLOOP_URL", "RADLOOP_PORT_ENTRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RADLOOP_ENVIRONMENT", "local")
    monkeypatch.setenv("RADLOOP_VAR_DIR", str(tmp_path))
    return tmp_path


def test_the_commands_talk_to_the_platform_that_runs(local_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The port the running ``radloop up`` recorded, else RADLOOP_PORT_ENTRY, else 8080; --url always wins. The
    commands used 8080 whatever the platform ran on, so `models approve` could act on another deployment holding it
    (found by a review)."""
    assert resolve_url(None) == LOCAL_URL == "http://127.0.0.1:8080"
    monkeypatch.setenv("RADLOOP_PORT_ENTRY", "9081")
    assert resolve_url(None) == "http://127.0.0.1:9081"
    (local_env / "run").mkdir()
    (local_env / "run" / "state.json").write_text(json.dumps({"ports": {"entry": 32496, "aws": 4566}}))
    assert resolve_url(None) == "http://127.0.0.1:32496"
    assert resolve_url("https://radloop.hospital.example/") == "https://radloop.hospital.example"
    (local_env / "run" / "state.json").write_text("{not json")
    assert resolve_url(None) == "http://127.0.0.1:9081"
    monkeypatch.setenv("RADLOOP_PORT_ENTRY", "99999")
    assert resolve_url(None) == LOCAL_URL
